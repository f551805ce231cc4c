"""The upload page driven by Streamlit's AppTest, with real images and a real registered model."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from serving import free_port
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "digitml" / "app.py")
RUN_TIMEOUT = 120


def drawn_seven() -> bytes:
    page = Image.new("RGB", (600, 500), (250, 250, 250))
    pen = ImageDraw.Draw(page)
    pen.line([(180, 120), (420, 115)], fill=(20, 20, 20), width=14)
    pen.line([(420, 115), (300, 420)], fill=(20, 20, 20), width=14)
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


def blank() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (100, 100), 255).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def page(registered_model, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered_model)
    monkeypatch.delenv("DIGITML_APP_MODEL_URI", raising=False)
    monkeypatch.delenv("DIGITML_APP_ENDPOINT", raising=False)
    app = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT)
    return app.run()


def digits_shown(app) -> list[str]:
    return [m.value for m in app.markdown if "font-size:96px" in m.value]


def test_page_names_the_model_and_its_accuracy(page):
    assert not page.exception and not page.error
    sidebar_text = " ".join(m.value for m in page.sidebar.markdown)
    assert "digit-classifier" in sidebar_text and "champion" in sidebar_text
    assert "test accuracy" in sidebar_text
    options = page.sidebar.selectbox[0].options
    assert options[0] == "models:/digit-classifier@champion" and any(
        "version 1" in o for o in options
    )


def test_uploaded_image_shows_what_the_model_sees_and_the_digit(page):
    page.file_uploader[0].upload("seven.png", drawn_seven(), "image/png").run(timeout=RUN_TIMEOUT)
    assert not page.exception and not page.error
    assert any(">7<" in value for value in digits_shown(page))
    assert page.metric[0].label == "confidence"
    assert len(page.get("imgs")) >= 1 or len(page.get("image")) >= 1


def test_several_uploads_each_get_a_result(page):
    uploader = page.file_uploader[0]
    uploader.set_value(
        [("a.png", drawn_seven(), "image/png"), ("b.png", drawn_seven(), "image/png")]
    )
    page.run(timeout=RUN_TIMEOUT)
    assert [header.value for header in page.subheader] == ["a.png", "b.png"]
    assert len(digits_shown(page)) == 2


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("notes.png", b"this is text, not a picture", "not a readable image"),
        ("blank.png", blank(), "blank"),
        ("empty.png", b"", "empty"),
    ],
)
def test_bad_uploads_get_a_readable_message(page, name, content, message):
    page.file_uploader[0].upload(name, content, "image/png").run(timeout=RUN_TIMEOUT)
    assert not page.exception
    assert any(message in error.value for error in page.error)


def test_missing_model_is_reported_on_the_page(registered_model, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered_model)
    monkeypatch.setenv("DIGITML_APP_MODEL_URI", "models:/no-such-model@champion")
    app = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT).run()
    assert not app.exception
    assert "no registered model named 'no-such-model'" in app.error[0].value


def test_unreachable_endpoint_is_reported_on_the_page(monkeypatch):
    monkeypatch.setenv("DIGITML_APP_ENDPOINT", f"http://127.0.0.1:{free_port()}/invocations")
    app = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT).run()
    app.file_uploader[0].upload("seven.png", drawn_seven(), "image/png").run(timeout=RUN_TIMEOUT)
    assert not app.exception
    assert "cannot be reached" in app.error[0].value


def test_switching_version_keeps_predicting(page):
    page.sidebar.selectbox[0].set_value("models:/digit-classifier/1").run(timeout=RUN_TIMEOUT)
    page.file_uploader[0].upload("seven.png", drawn_seven(), "image/png").run(timeout=RUN_TIMEOUT)
    assert not page.exception and not page.error
    assert "version **1**" in " ".join(m.value for m in page.sidebar.markdown)
    assert np.array(digits_shown(page)).size == 1
