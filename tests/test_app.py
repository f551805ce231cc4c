"""The upload page driven by Streamlit's AppTest, with real images and a real registered model."""

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from drawings import encoded
from PIL import Image, ImageDraw
from serving import free_port
from streamlit.testing.v1 import AppTest

from conftest import require_mnist, tracking_at
from digitml.data import as_pixels, load_mnist_dir
from digitml.registry import register_run_model

APP = str(Path(__file__).resolve().parent.parent / "digitml" / "app.py")
RUN_TIMEOUT = 120


def drawn_seven() -> bytes:
    page = Image.new("RGB", (600, 500), (250, 250, 250))
    pen = ImageDraw.Draw(page)
    pen.line([(180, 120), (420, 115)], fill=(20, 20, 20), width=14)
    pen.line([(420, 115), (300, 420)], fill=(20, 20, 20), width=14)
    return encoded(page)


def blank() -> bytes:
    return encoded(Image.new("L", (100, 100), 255))


@pytest.fixture
def page(registered_model, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered_model)
    monkeypatch.delenv("DIGITML_APP_MODEL_URI", raising=False)
    monkeypatch.delenv("DIGITML_APP_ENDPOINT", raising=False)
    app = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT)
    return app.run()


def drawn_mnist(digit: np.ndarray) -> bytes:
    """An MNIST test digit drawn dark on a light 400x300 page."""
    page = Image.new("L", (400, 300), 245)
    page.paste(Image.fromarray(255 - digit).resize((224, 224)), (90, 40))
    return encoded(page)


@pytest.fixture(scope="module")
def mnist_digits():
    """Three MNIST test digits of different classes (uint8) and their labels."""
    data = load_mnist_dir(require_mnist())
    images = as_pixels(data.test_images[:3])
    labels = data.test_labels[:3].tolist()
    assert len(set(labels)) == 3
    return images, labels


def digits_shown(app) -> list[str]:
    """The big digit of each result, in page order."""
    shown = [m.value for m in app.markdown if "font-size:96px" in m.value]
    return [re.search(r">(\d)<", value)[1] for value in shown]


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
    assert digits_shown(page) == ["7"]
    assert page.metric[0].label == "confidence" and page.metric[0].value.endswith("%")
    captions = [image.captions for image in page.get("image")]
    assert captions == [["what you sent"], ["what the model sees (28×28)"]]


def test_several_uploads_each_get_their_own_result(page, mnist_digits):
    images, labels = mnist_digits
    page.file_uploader[0].set_value(
        [(f"{n}.png", drawn_mnist(image), "image/png") for n, image in enumerate(images)]
    )
    page.run(timeout=RUN_TIMEOUT)
    assert not page.exception and not page.error
    assert [header.value for header in page.subheader] == [f"{n}.png" for n in range(len(images))]
    assert digits_shown(page) == [str(label) for label in labels]


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


@pytest.fixture(scope="module")
def shifted_version(mnist_model, registered_model):
    """Version 2 of digit-classifier: the fast recipe trained on MNIST with every label moved
    up by one (a 7 is taught as 8), so its answers differ from the champion's."""
    from digitml.config import load_config
    from digitml.training_run import run_training

    folder = Path(registered_model.removeprefix("sqlite:///")).parent
    with tracking_at(registered_model, folder):
        data = load_mnist_dir(require_mnist())
        shifted = dataclasses.replace(
            data, train_labels=(data.train_labels + 1) % 10, test_labels=(data.test_labels + 1) % 10
        )
        config = load_config("fast", {"limit": 6000, "experiment": "model"})
        run_id = run_training(config, data=shifted, checkpoint_root=folder / "checkpoints").run_id
        version = register_run_model(run_id, "digit-classifier").version
    return str(version)


def test_switching_version_changes_the_model_that_answers(page, shifted_version):
    image = ("seven.png", drawn_seven(), "image/png")
    page.file_uploader[0].upload(*image).run(timeout=RUN_TIMEOUT)
    assert digits_shown(page) == ["7"]
    version_uri = f"models:/digit-classifier/{shifted_version}"
    page.sidebar.selectbox[0].set_value(version_uri).run(timeout=RUN_TIMEOUT)
    assert not page.exception and not page.error
    sidebar_text = " ".join(m.value for m in page.sidebar.markdown)
    assert f"version **{shifted_version}**" in sidebar_text
    assert digits_shown(page) == ["8"]
