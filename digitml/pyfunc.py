"""The served digit classifier, logged as MLflow models-from-code (no pickled class).

Input: a DataFrame whose rows hold either `image` (the bytes of a PNG/JPEG/BMP/GIF/WebP file;
base64 text in JSON) or `pixels` (a 28x28 array, 0-255 or 0-1, white digit on black).
Output: one row per input with `digit`, `confidence` and `probabilities` (10 floats).
Bad input raises MlflowException(INVALID_PARAMETER_VALUE): HTTP 400 with the message, no trace.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from digitml.imaging import ImageInputError, rows_to_batch

KERAS_MODEL_ARTIFACT = "keras_model"


class DigitClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import keras

        self.model = keras.models.load_model(context.artifacts[KERAS_MODEL_ARTIFACT], compile=False)

    def predict(self, context, model_input, params=None):
        try:
            images = rows_to_batch(input_rows(model_input))
        except ImageInputError as error:
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from error
        # predict_on_batch: Keras' predict() costs ~50 ms per call even for one image.
        probabilities = np.asarray(self.model.predict_on_batch(images), dtype=np.float64)
        return predictions_frame(probabilities)


def input_rows(model_input) -> list[dict]:
    """The request as a list of row dicts, whatever shape MLflow parsed it into."""
    if isinstance(model_input, pd.DataFrame):
        return model_input.to_dict("records")
    if isinstance(model_input, dict):
        return pd.DataFrame(model_input).to_dict("records")
    if isinstance(model_input, np.ndarray):
        return [{"pixels": pixels} for pixels in model_input]
    raise ImageInputError(f"unsupported input type {type(model_input).__name__}")


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
