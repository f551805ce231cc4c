"""`digitml predict` on image files, as a user runs it."""

import json

import pytest
from PIL import Image

from conftest import invoke_cli, require_mnist
from digitml.data import as_pixels, load_mnist_dir


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A drawn seven (dark on white, large canvas), a photo-ish JPEG two, and two bad files."""
    folder = tmp_path_factory.mktemp("images")
    data = load_mnist_dir(require_mnist())
    for index, name in ((0, "seven.png"), (1, "two.jpg")):
        digit = as_pixels(data.test_images[index])
        page = Image.new("L", (400, 300), 255)
        page.paste(Image.fromarray(255 - digit).resize((224, 224)), (90, 40))
        page.convert("RGB").save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    Image.new("L", (64, 64), 255).save(folder / "blank.png")
    return folder


def test_predict_prints_file_digit_confidence(mnist_model, files, monkeypatch):
    _, _, model_path = mnist_model
    monkeypatch.chdir(files)
    result = invoke_cli("predict", "--model-uri", model_path, "seven.png", "two.jpg")
    assert result.exit_code == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.strip().splitlines()]
    assert [(row[0], row[1]) for row in rows] == [("seven.png", "7"), ("two.jpg", "2")]
    assert all(0.5 < float(row[2]) <= 1.0 for row in rows)


def test_predict_json_has_probabilities(mnist_model, files, monkeypatch):
    _, _, model_path = mnist_model
    monkeypatch.chdir(files)
    result = invoke_cli("predict", "--model-uri", model_path, "--json", "seven.png")
    assert result.exit_code == 0, result.stderr[-2000:]
    (line,) = result.stdout.strip().splitlines()
    record = json.loads(line)
    assert record["file"] == "seven.png" and record["digit"] == 7
    assert len(record["probabilities"]) == 10
    assert sum(record["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert record["confidence"] == pytest.approx(max(record["probabilities"]))


def test_unreadable_files_get_the_servers_messages_and_a_non_zero_exit(
    mnist_model, files, monkeypatch
):
    _, _, model_path = mnist_model
    monkeypatch.chdir(files)
    result = invoke_cli(
        "predict", "--model-uri", model_path, "seven.png", "notes.txt", "blank.png", "missing.png"
    )
    assert result.exit_code == 1
    assert result.stdout.split()[:2] == ["seven.png", "7"]
    errors = result.stderr.strip().splitlines()[-3:]
    assert errors[0].startswith("notes.txt: not a readable image")
    assert errors[1].startswith("blank.png: the image is blank")
    assert errors[2].startswith("missing.png: No such file")
    assert "Traceback" not in result.stderr


class CountingModel:
    """The real pyfunc model, counting the calls made to it."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def predict(self, frame):
        self.calls += 1
        return self.model.predict(frame)


def test_files_are_scored_in_one_model_call_and_each_bad_file_on_its_own(mnist_model, files):
    import mlflow

    from digitml.predict import predict_files

    _, _, model_path = mnist_model
    model = CountingModel(mlflow.pyfunc.load_model(model_path))
    good = [str(files / name) for name in ("seven.png", "two.jpg", "seven.png")]
    assert [prediction.digit for prediction in predict_files(model, good)] == [7, 2, 7]
    assert model.calls == 1
    mixed = [str(files / name) for name in ("notes.txt", "seven.png", "missing.png", "two.jpg")]
    predictions = predict_files(model, mixed)
    assert [prediction.path for prediction in predictions] == mixed
    assert [prediction.digit for prediction in predictions] == [None, 7, None, 2]
    assert predictions[0].error.startswith("not a readable image")
    assert predictions[2].error.startswith("No such file")
