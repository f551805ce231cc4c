"""A logged digit classifier's network in the formats other runtimes read: ONNX (ONNX Runtime, any
language), LiteRT (`.tflite`, phones and small devices) and a TensorFlow SavedModel (TF Serving).

Each format is written by Keras' own `Model.export`, run here on the same check batch as the
Keras model, and stored only if its probabilities match within EXPORT_TOLERANCE; the files go into
the logged model itself (`exports/`), where the MLflow UI lists them beside the model and a
download of the model carries them. The preprocessing stays the model's own `imaging.py`: every
format takes the batch it makes, 28x28x1 float32 in [0, 1], white digit on black.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np

from digitml import console
from digitml.config import EXPORT_FORMATS
from digitml.errors import UserError
from digitml.pyfunc import KERAS_MODEL_FILE, stderr_discarded

ONNX_OPSET = 17  # ONNX Runtime 1.16 (2023) and later run it
EXPORTS_DIR = "exports"  # inside the logged model's artifacts
# Largest difference of a probability allowed between a format and the Keras model. Measured on
# MNIST's test set: below 1e-6 for every format (docs/serving.md); float32 kernels differ only in
# the order they sum in.
EXPORT_TOLERANCE = 1e-5
CHECK_BATCH = 64

if TYPE_CHECKING:
    import keras

Probabilities = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Format:
    file: str  # its name in exports/
    keras_format: str  # its name for Keras' Model.export
    runner: Callable[[Path], Probabilities]  # the file's probabilities in its own runtime


@dataclass(frozen=True)
class Exported:
    format: str
    uri: str  # where MLflow stores it
    max_difference: float  # largest |probability - Keras'| on the check batch
    seconds: float


def export_model(
    model_uri: str, folder: Path, formats: Sequence[str] = EXPORT_FORMATS, store: bool = True
) -> list[Exported]:
    """Export the network of the pyfunc digit classifier at `model_uri` in each of `formats` into
    `folder`/exports, each checked against Keras; then, if `store` and every check passed, into
    the logged model's `exports/`."""
    import keras

    model_id = mlflow.models.get_model_info(model_uri).model_id
    model_dir = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder / "model")))
    keras_file = model_dir / "artifacts" / KERAS_MODEL_FILE
    if not keras_file.is_file():
        raise UserError(f"{model_uri} is not a digitml image model: it holds no Keras network")
    network = at_inference(keras.models.load_model(keras_file, compile=False))
    check = check_batch()
    expected = np.asarray(network.predict_on_batch(check))  # Keras exports only called models
    client = mlflow.MlflowClient()
    location = client.get_logged_model(model_id).artifact_location
    exports = folder / EXPORTS_DIR
    exports.mkdir()
    results = []
    for name in formats:
        started = time.monotonic()
        form = FORMATS[name]
        path = exports / form.file
        options = {"opset_version": ONNX_OPSET} if name == "onnx" else {}
        with quiet():
            network.export(str(path), format=form.keras_format, verbose=False, **options)
            difference = float(np.abs(form.runner(path)(check) - expected).max())
        if not difference <= EXPORT_TOLERANCE:  # NaN included
            raise UserError(
                f"the {name} export of {model_uri} differs from the Keras model by "
                f"{difference:.2g} (more than {EXPORT_TOLERANCE:g}): nothing stored"
            )
        uri = f"{location}/{EXPORTS_DIR}/{path.name}"
        results.append(Exported(name, uri, difference, time.monotonic() - started))
    if store:
        client.log_model_artifacts(model_id, str(exports), EXPORTS_DIR)
    return results


def at_inference(network: keras.Model) -> keras.Model:
    """`network` called with training=False, which the exported graph keeps. Keras traces a
    model for export without it, so the training-only layers' random ops (RandomErasing, in
    `record`'s networks) would be exported, and ONNX has no such op."""
    import keras

    images = keras.Input(network.input_shape[1:])
    return keras.Model(images, network(images, training=False), name=network.name)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Exporting and running the formats without their chatter (unless DIGITML_VERBOSE): Keras'
    ONNX converter trips numpy's FutureWarning on `np.object`; LiteRT's interpreter announces
    its CPU delegate on the process's stderr ("Created TensorFlow Lite XNNPACK delegate")."""
    if console.VERBOSE:
        yield
        return
    with warnings.catch_warnings(), stderr_discarded():
        warnings.filterwarnings("ignore", "In the future `np.object`", FutureWarning)
        yield


def check_batch() -> np.ndarray:
    """Fixed images every format is compared on: blank, full, and seeded random ones."""
    images = np.random.default_rng(0).random((CHECK_BATCH, 28, 28, 1), dtype=np.float32)
    images[0], images[1] = 0.0, 1.0
    return images


def onnx_runner(path: Path) -> Probabilities:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda images: session.run(None, {input_name: images})[0]


def litert_runner(path: Path) -> Probabilities:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (given,) = interpreter.get_input_details()
    (returned,) = interpreter.get_output_details()

    def probabilities(images: np.ndarray) -> np.ndarray:
        interpreter.resize_tensor_input(given["index"], images.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(given["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(returned["index"]).copy()

    return probabilities


def saved_model_runner(path: Path) -> Probabilities:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return lambda images: loaded.serve(images).numpy()


# config.EXPORT_FORMATS names them for the command line, which must not import this module.
FORMATS = {
    "onnx": Format("model.onnx", "onnx", onnx_runner),
    "litert": Format("model.tflite", "litert", litert_runner),
    "saved_model": Format("saved_model", "tf_saved_model", saved_model_runner),
}
