"""The served digit classifier: one row per input, clean errors, any input shape MLflow passes."""

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode

from digitml.data import load_digits


@pytest.fixture(scope="module")
def served(mnist_model):
    """The session's MNIST model as MLflow loads it, and 8 digits (0-1 floats, 28x28)."""
    _, _, model_path = mnist_model
    return mlflow.pyfunc.load_model(model_path), load_digits().test_images[:8, ..., 0]


def pixels_rows(images: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"pixels": [image.tolist() for image in images]})


def test_pyfunc_returns_digit_confidence_and_probabilities(served):
    model, images = served
    result = model.predict(pixels_rows(images))
    assert list(result.columns) == ["digit", "confidence", "probabilities"]
    probabilities = np.array(result["probabilities"].tolist())
    assert probabilities.shape == (8, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert (result["digit"].to_numpy() == probabilities.argmax(axis=1)).all()
    assert np.allclose(result["confidence"], probabilities.max(axis=1))


def test_pyfunc_reads_0_255_and_0_1_pixels_alike(served):
    model, images = served
    unit = model.predict(pixels_rows(images))
    bytes_ = model.predict(pixels_rows(images * 255))
    assert unit["digit"].tolist() == bytes_["digit"].tolist()
    assert np.allclose(unit["confidence"], bytes_["confidence"], atol=1e-5)


def test_a_dict_of_columns_and_a_bare_array_are_read_as_rows(served):
    model, images = served
    expected = model.predict(pixels_rows(images))["digit"].tolist()
    as_dict = model.predict({"pixels": [image.tolist() for image in images]})
    assert as_dict["digit"].tolist() == expected
    assert model.predict(images)["digit"].tolist() == expected


@pytest.mark.parametrize(
    "pixels, message",
    [
        (np.zeros((27, 28)).tolist(), "28x28"),
        (np.full((28, 28), 300.0).tolist(), "0-255"),
        (np.full((28, 28), np.nan).tolist(), "NaN"),
    ],
)
def test_pyfunc_rejects_bad_pixels_with_a_clear_message(served, pixels, message):
    model, _ = served
    with pytest.raises(MlflowException, match=message) as raised:
        model.predict(pd.DataFrame({"pixels": [pixels]}))
    assert raised.value.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)


def test_an_unsupported_input_type_is_named(served):
    model, _ = served
    with pytest.raises(MlflowException, match="unsupported input type str"):
        model.predict("7")
