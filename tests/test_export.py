"""`digitml export`: ONNX, LiteRT and SavedModel files of a logged model's network, each run in its
own runtime (ONNX Runtime, ai-edge-litert's interpreter, tf.saved_model.load) against Keras on
genuine MNIST test images and on full-size drawings, and stored with the model in MLflow."""

from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from drawings import canvas_png, icon_png, photo_jpeg

from conftest import all_runs, invoke_cli, require_mnist, tracking_at
from digitml.config import EXPORT_FORMATS
from digitml.data import as_pixels, load_mnist_dir
from digitml.export import (
    EXPORT_TOLERANCE,
    EXPORTS_DIR,
    FORMATS,
    ONNX_OPSET,
    export_model,
)
from digitml.imaging import rows_to_batch
from digitml.pyfunc import KERAS_MODEL_FILE

MNIST_SLICE = 2_000  # of the 10,000 test images (all of them: bench/bench_export.py)


@pytest.fixture(scope="module")
def exported(mnist_model, tmp_path_factory):
    """The session model's network exported in every format, not stored (other tests share the
    model): (the export's results, {format: its probabilities function}, the Keras network)."""
    uri, run_id, model_path = mnist_model
    folder = tmp_path_factory.mktemp("export")
    with tracking_at(uri, Path(uri.removeprefix("sqlite:///")).parent):
        results = export_model(f"runs:/{run_id}/model", folder, store=False)
    runners = {
        name: FORMATS[name].runner(folder / EXPORTS_DIR / FORMATS[name].file)
        for name in EXPORT_FORMATS
    }
    network = keras.models.load_model(
        Path(model_path, "artifacts", KERAS_MODEL_FILE), compile=False
    )
    return results, runners, network


@pytest.fixture(scope="module")
def mnist_test():
    data = load_mnist_dir(require_mnist())
    return data.test_images[:MNIST_SLICE], data.test_labels[:MNIST_SLICE]


def test_each_format_was_checked_within_the_tolerance_as_it_was_written(exported):
    results, _, _ = exported
    assert [result.format for result in results] == list(EXPORT_FORMATS)
    assert all(0 <= result.max_difference <= EXPORT_TOLERANCE for result in results)


@pytest.mark.parametrize("name", EXPORT_FORMATS)
def test_every_format_gives_keras_answers_on_mnist(exported, mnist_test, name):
    """The same digit on every image, each probability within the tolerance."""
    _, runners, network = exported
    images, labels = mnist_test
    expected = np.asarray(network.predict_on_batch(images))
    got = np.concatenate(
        [runners[name](images[start : start + 500]) for start in range(0, len(images), 500)]
    )
    assert got.shape == expected.shape == (MNIST_SLICE, 10)
    assert np.abs(got - expected).max() <= EXPORT_TOLERANCE
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert (got.argmax(1) == labels).mean() > 0.97  # a trained network, not two equal blanks


@pytest.mark.parametrize("name", EXPORT_FORMATS)
def test_every_format_reads_drawings_photos_and_icons_as_keras_does(exported, mnist_test, name):
    """Through the model's own preprocessing, as served: a 1050x800 canvas, a 3000x4000 phone
    photo, a transparent icon."""
    _, runners, network = exported
    digits = as_pixels(mnist_test[0][:4])
    rows = [
        {"image": make(digit)} for digit in digits for make in (canvas_png, photo_jpeg, icon_png)
    ]
    batch = rows_to_batch(rows)
    expected = np.asarray(network.predict_on_batch(batch))
    got = runners[name](batch)
    assert np.abs(got - expected).max() <= EXPORT_TOLERANCE
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_export_stores_the_files_with_the_model_and_prints_where(tracking_uri):
    small = ("--dataset", "digits", "--limit", "300", "--epochs", "1")
    assert invoke_cli("train", "--config", "fast", *small).exit_code == 0
    (run,) = all_runs()
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "exported").version
    mlflow.MlflowClient().set_registered_model_alias("exported", "champion", version)

    result = invoke_cli("export", "--model-uri", "models:/exported@champion", "--format", "onnx")
    assert result.exit_code == 0, result.output[-3000:]
    model = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    stored = mlflow.MlflowClient().list_logged_model_artifacts(model.model_id, EXPORTS_DIR)
    assert [Path(item.path).name for item in stored] == ["model.onnx"]
    lines = result.stdout.splitlines()
    assert lines[0] == "model: models:/exported@champion"
    (onnx_line,) = lines[1:]
    assert onnx_line.startswith(f"onnx (opset {ONNX_OPSET})")
    assert f"{EXPORTS_DIR}/model.onnx" in onnx_line and "max |Δp|" in onnx_line
    # Downloading the model brings its exports.
    local = Path(mlflow.artifacts.download_artifacts("models:/exported@champion"))
    assert (local / EXPORTS_DIR / "model.onnx").stat().st_size > 10_000


@pytest.mark.parametrize(
    "uri, named",
    [
        ("runs:/0123456789abcdef/model", "Run with id=0123456789abcdef not found"),
        ("models:/nosuch@champion", "Registered Model with name=nosuch not found"),
    ],
)
def test_an_unknown_model_is_named(tracking_uri, uri, named):
    result = invoke_cli("export", "--model-uri", uri)
    assert result.exit_code == 1
    assert named in result.stderr and "Traceback" not in result.output


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        return model_input


def test_a_model_without_a_keras_network_is_refused(tracking_uri):
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"])
    result = invoke_cli("export", "--model-uri", f"runs:/{run.info.run_id}/model")
    assert result.exit_code == 1
    assert "is not a digitml image model: it holds no Keras network" in result.stderr
