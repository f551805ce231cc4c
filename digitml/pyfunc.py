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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

KERAS_MODEL_ARTIFACT = "keras_model"
KERAS_MODEL_FILE = "digit_model.keras"  # the network's file among the model's artifacts
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
            rows = input_rows(model_input, self.imaging.check_row_count)
            images = self.imaging.rows_to_batch(rows)
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


def input_rows(model_input, check_count: Callable[[int], None]) -> list[dict]:
    """The request as a list of row dicts, whatever shape MLflow parsed it into. `check_count`
    sees the number of rows first: building a million rows takes a second, refusing them none."""
    if isinstance(model_input, pd.DataFrame):
        check_count(len(model_input))
        return model_input.to_dict("records")
    if isinstance(model_input, dict):
        check_count(columns_length(model_input))
        rows = zip(*model_input.values(), strict=True)
        return [dict(zip(model_input, values, strict=True)) for values in rows]
    if isinstance(model_input, np.ndarray):
        if model_input.ndim == 0:
            raise bad_input("a bare array must hold one row of pixels per input, got a scalar")
        check_count(len(model_input))
        return [{"pixels": pixels} for pixels in model_input]
    raise bad_input(f"unsupported input type {type(model_input).__name__}")


def columns_length(columns: dict) -> int:
    """The rows a dict of columns holds. A column is a list, or an array whose first axis is the
    rows: MLflow's server parses REST `inputs` and `instances` into arrays of any shape."""
    lengths = {name: column_length(name, values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"'{name}' {length}" for name, length in lengths.items())
        raise bad_input(f"the columns must be equally long, got {sizes}")
    return next(iter(lengths.values()), 0)


def column_length(name, values) -> int:
    """The rows one column holds: it must be a list or an array of one value per row."""
    if isinstance(values, (list, tuple, pd.Series)) or (
        isinstance(values, np.ndarray) and values.ndim > 0
    ):
        return len(values)
    raise bad_input(
        f"column '{name}' must be a list with one value per row, got {type(values).__name__}"
    )


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
