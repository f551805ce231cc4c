"""The served digit classifier, logged as MLflow models-from-code (no pickled class).

Input: a DataFrame whose rows hold either `image` (the bytes of a PNG/JPEG/BMP/GIF/WebP file;
base64 text in JSON) or `pixels` (a 28x28 array, 0-255 or 0-1, white digit on black).
Output: one row per input with `digit`, `confidence` and `probabilities` (10 floats).
Bad input raises MlflowException(INVALID_PARAMETER_VALUE): HTTP 400 with the message, no trace.

The model runs its own copies of this file and of `imaging.py` (the preprocessing, logged as an
artifact), never the installed digitml: a registered version answers as it did when it was logged,
whatever digitml version is installed, or none. Hence no `digitml` import here.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

KERAS_MODEL_ARTIFACT = "keras_model"
IMAGING_ARTIFACT = "imaging"


class DigitClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        # TensorFlow's C++ log would fill the server's console with CUDA probes on a machine
        # without a GPU ("failed call to cuInit"); a level the user set stays.
        if not os.environ.get("TF_CPP_MIN_LOG_LEVEL"):
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        with stderr_discarded():
            import keras

        self.imaging = module_from_file(
            "digitml_model_imaging", context.artifacts[IMAGING_ARTIFACT]
        )
        self.model = keras.models.load_model(context.artifacts[KERAS_MODEL_ARTIFACT], compile=False)

    # A DataFrame hint: MLflow infers no schema from it, so every input reaches this method to be
    # checked here (MLflow passes a DataFrame from a REST request; see input_rows for the rest).
    def predict(self, context, model_input: pd.DataFrame, params=None):
        try:
            images = self.imaging.rows_to_batch(input_rows(model_input))
        except self.imaging.ImageInputError as error:
            raise bad_input(str(error)) from error
        # predict_on_batch: Keras' predict() costs ~50 ms per call even for one image.
        probabilities = np.asarray(self.model.predict_on_batch(images), dtype=np.float64)
        return predictions_frame(probabilities)


@contextmanager
def stderr_discarded() -> Iterator[None]:
    """The process's file descriptor 2 (where C++ libraries write) discarded: TensorFlow writes
    its start-up lines ("Could not find cuda drivers on your machine", absl's notice) there while
    it loads, before any log level applies. Python's own errors still show, once restored. The
    served model runs this copy; the `digitml` commands use it too (`console.load_tensorflow`)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def input_rows(model_input) -> list[dict]:
    """The request as a list of row dicts, whatever shape MLflow parsed it into."""
    if isinstance(model_input, pd.DataFrame):
        return model_input.to_dict("records")
    if isinstance(model_input, dict):
        return pd.DataFrame(model_input).to_dict("records")
    if isinstance(model_input, np.ndarray):
        return [{"pixels": pixels} for pixels in model_input]
    raise bad_input(f"unsupported input type {type(model_input).__name__}")


def bad_input(message: str) -> MlflowException:
    """The error MLflow's server answers with HTTP 400 and `message`, without a stack trace."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def module_from_file(name: str, path: str) -> ModuleType:
    """The Python file at `path` loaded as module `name`, apart from any installed package."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def predictions_frame(probabilities: np.ndarray) -> pd.DataFrame:
    """digit, confidence and the 10 probabilities per row."""
    return pd.DataFrame(
        {
            "digit": probabilities.argmax(axis=1).astype(np.int64),
            "confidence": probabilities.max(axis=1),
            "probabilities": [row.tolist() for row in probabilities],
        }
    )


mlflow.models.set_model(DigitClassifier())
