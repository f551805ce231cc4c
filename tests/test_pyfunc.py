"""The served digit classifier: one row per input, clean errors, any input shape MLflow passes."""

import base64
import re

import mlflow
import numpy as np
import pandas as pd
import pytest
from drawings import encoded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import (
    array_shapes,
    arrays,
    boolean_dtypes,
    byte_string_dtypes,
    complex_number_dtypes,
    datetime64_dtypes,
    floating_dtypes,
    integer_dtypes,
    unicode_string_dtypes,
    unsigned_integer_dtypes,
)
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode
from PIL import Image

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
        # NumPy raised OverflowError (found by the fuzz tests below), and quietly made numbers of
        # text, dates and complex numbers.
        ([[10**400] * 28] * 28, "0-255"),
        ([["1"] * 28] * 28, r"not a numeric 28x28 array \(holds str\d* values\)"),
        (np.zeros((28, 28), "datetime64[s]"), "holds datetime64"),
        (np.full((28, 28), 1j), "holds complex128 values"),
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


def test_a_dict_of_arrays_as_mlflows_server_parses_json_is_read_as_rows(served):
    """REST `inputs` as a dict, and `instances`, reach the model as a dict of arrays whose first
    axis is the rows (pandas refused a (rows, 28, 28) column)."""
    model, images = served
    assert model.predict({"pixels": images})["digit"].tolist() == (
        model.predict(images)["digit"].tolist()
    )


A_BILLION_ZEROS = np.broadcast_to(np.uint8(0), (10**9,))  # one byte of memory


# Found by the fuzz tests below (the text column and the unequal columns are the other two ways
# pandas refused a dict): each escaped as another exception (pandas' ValueError, NumPy's
# TypeError, a sort's TypeError), or, for a million rows, took a second building them first.
@pytest.mark.parametrize(
    "model_input, message",
    [
        (np.array(0), "a bare array must hold one row of pixels per input, got a scalar"),
        (
            {"pixels": np.array(0)},
            "column 'pixels' must be a list with one value per row, got ndarray",
        ),
        ({"image": "aGk="}, "column 'image' must be a list with one value per row, got str"),
        (
            {"image": [b"x"], "pixels": []},
            "the columns must be equally long, got 'image' 1, 'pixels' 0",
        ),
        (pd.DataFrame({"image": [b"x"], 0: [b"x"]}), "row 0: unknown column '0'"),
        (A_BILLION_ZEROS, "1,000,000,000 rows: at most 10,000 per request"),
        ({"pixels": A_BILLION_ZEROS}, "1,000,000,000 rows: at most 10,000 per request"),
    ],
    ids=[
        "scalar-array",
        "scalar-column",
        "text-column",
        "unequal-columns",
        "numbered-column",
        "billion-row-array",
        "billion-row-column",
    ],
)
def test_malformed_requests_are_refused_with_a_clear_message(served, model_input, message):
    model, _ = served
    with pytest.raises(MlflowException, match=re.escape(message)) as raised:
        model.predict(model_input)
    assert raised.value.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)


# Fuzzing: whatever reaches the served model, as MLflow would pass it, gives one prediction per
# row or our clean error; nothing else escapes, and no small input takes a second.

FUZZ = settings(
    max_examples=200,  # 2-6 s a test on one core
    deadline=None,  # how long an input takes is the benchmark's; a loaded CI machine is slow
    derandomize=True,  # the same inputs on every run, so CI is reproducible
    database=None,
    # The function-scoped fixtures are conftest's autouse checks around each test (no inherited
    # experiment, a clean checkout): nothing an example changes needs them reset between examples.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def predicts_or_refuses_cleanly(model, model_input, rows: int) -> None:
    """The property: a frame of one prediction per row, or MlflowException(INVALID_PARAMETER_VALUE)."""
    try:
        result = model.predict(model_input)
    except MlflowException as error:
        assert error.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE), error.message
        return
    assert list(result.columns) == ["digit", "confidence", "probabilities"]
    assert len(result) == rows


def as_columns(rows: list[dict]) -> dict[str, list]:
    """Rows as a dict of columns, a missing value as None."""
    names = dict.fromkeys(name for row in rows for name in row)
    return {name: [row.get(name) for row in rows] for name in names}


def fed_rows(rows: list[dict], form: str):
    """Rows the way a client may send them: a DataFrame (REST `dataframe_split`/`_records`) or
    a dict of columns (REST `inputs`)."""
    return pd.DataFrame(rows) if form == "frame" else as_columns(rows)


ROW_FORMS = st.sampled_from(["frame", "columns"])


# Image files.

# Each format's signature, so that random bytes after it reach that format's decoder.
SIGNATURES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8"]
RANDOM_FILES = st.builds(bytes.__add__, st.sampled_from(SIGNATURES), st.binary(max_size=300))
# The image modes each of our formats writes (GIF writes a palette, WebP colour).
WRITTEN_MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "BMP": ["1", "L", "P", "RGB"],
    "GIF": ["L", "RGBA"],
    "WEBP": ["L", "RGBA"],
}
ANIMATED_FORMATS = {"PNG", "GIF", "WEBP"}


@st.composite
def image_files(draw) -> bytes:
    """A small valid image file of random pixels, in one of our formats and a mode it writes,
    sometimes with a second frame (animated GIF, PNG and WebP)."""
    fmt = draw(st.sampled_from(list(WRITTEN_MODES)))
    mode = draw(st.sampled_from(WRITTEN_MODES[fmt]))
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    frames = [
        Image.fromarray(draw(arrays(np.uint8, (*size, 4)))).convert(mode)
        for _ in range(draw(st.integers(1, 2 if fmt in ANIMATED_FORMATS else 1)))
    ]
    animation = {"save_all": True, "append_images": frames[1:]} if len(frames) > 1 else {}
    return encoded(frames[0], fmt, **animation)


@st.composite
def damaged(draw, files: st.SearchStrategy[bytes]) -> bytes:
    """A file from `files`, whole, cut short, or with a few runs of bytes overwritten."""
    data = draw(files)
    damage = draw(st.sampled_from(["none", "truncated", "overwritten"]))
    if damage == "truncated":
        return data[: draw(st.integers(0, len(data) - 1))]
    if damage == "overwritten":
        for _ in range(draw(st.integers(1, 3))):
            # Often within the header, where the sizes and the chunk lengths are.
            start = draw(st.integers(0, min(len(data) - 1, 64)) | st.integers(0, len(data) - 1))
            patch = draw(st.binary(min_size=1, max_size=8))
            data = data[:start] + patch + data[start + len(patch) :]
    return data


def sent_as(data: bytes, text: bool) -> bytes | str:
    """Image bytes as they are, or as the base64 text JSON carries."""
    return base64.b64encode(data).decode() if text else data


def image_rows(files: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[dict]]:
    """One to three rows, each an image from `files` as bytes or base64 text."""
    image = st.builds(sent_as, files, st.booleans())
    return st.lists(st.fixed_dictionaries({"image": image}), min_size=1, max_size=3)


@FUZZ
@given(rows=image_rows(RANDOM_FILES), form=ROW_FORMS)
def test_random_bytes_as_images_are_refused_cleanly(served, rows, form):
    predicts_or_refuses_cleanly(served[0], fed_rows(rows, form), len(rows))


@FUZZ
@given(rows=image_rows(damaged(image_files())), form=ROW_FORMS)
def test_whole_truncated_and_corrupted_image_files_predict_or_are_refused_cleanly(
    served, rows, form
):
    predicts_or_refuses_cleanly(served[0], fed_rows(rows, form), len(rows))


# Arrays.

# Shapes near a digit's, and large ones that cost nothing to make (zeros, or no elements at all).
PIXEL_LIKE_SHAPES = [(28, 28), (784,), (28, 28, 1), (1, 28, 28), (2, 28, 28), (28, 28, 3)]
LARGE_CHEAP_SHAPES = [(10_001, 28, 28), (0, 28, 28), (10**6,), (0, 10**6), (1, 4096, 4096)]
ARRAY_DTYPES = st.one_of(
    boolean_dtypes(),
    integer_dtypes(),
    unsigned_integer_dtypes(),
    floating_dtypes(),
    complex_number_dtypes(),
    unicode_string_dtypes(max_len=4),
    byte_string_dtypes(max_len=4),
    datetime64_dtypes(),
)
# JSON's values; Python's json reads integers of any size, beyond float64's range too.
NUMBERS = st.integers(0, 255) | st.integers() | st.integers(2**1024, 2**1100) | st.floats()
JSON_SCALARS = st.none() | st.booleans() | NUMBERS | st.text(max_size=10)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def typed_arrays(draw) -> np.ndarray:
    """Arrays of 0-4 dims of any element type (NaN and infinity included), or of JSON values."""
    shape = draw(
        st.sampled_from(PIXEL_LIKE_SHAPES)
        | array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
    )
    if draw(st.booleans()):
        return draw(arrays(object, shape, elements=JSON_VALUES))
    return draw(arrays(draw(ARRAY_DTYPES), shape))


ANY_ARRAYS = typed_arrays() | st.sampled_from(LARGE_CHEAP_SHAPES).map(np.zeros)


def array_forms(array: np.ndarray) -> list[tuple[object, int]]:
    """(input, rows) for each way an array may arrive: the bare array (REST `inputs` as a list),
    a dict holding it as the pixels column (REST `inputs` as a dict, `instances`), and one row
    whose pixels are the array or, when small, its nested lists (their making takes a second for
    the large arrays)."""
    rows = len(array) if array.ndim else 1
    forms = [
        (array, rows),
        ({"pixels": array}, rows),
        ({"pixels": [array]}, 1),
        (pd.DataFrame({"pixels": [array]}), 1),
    ]
    if array.size <= 10 * 784:
        forms.append((pd.DataFrame({"pixels": [array.tolist()]}), 1))
    return forms


@FUZZ
@given(array=ANY_ARRAYS)
def test_arrays_of_any_shape_and_type_predict_or_are_refused_cleanly(served, array):
    for model_input, rows in array_forms(array):
        predicts_or_refuses_cleanly(served[0], model_input, rows)


# JSON-like rows.


def nested_28x28(values: st.SearchStrategy) -> st.SearchStrategy[list[list]]:
    """28 lists of 28 from `values`: one value throughout but for a few (784 draws each would
    overrun Hypothesis' budget for one input)."""
    return arrays(object, (28, 28), elements=values, fill=values).map(np.ndarray.tolist)


PIXEL_NUMBERS = st.integers(0, 255) | st.floats(0, 1)
ROW_VALUES = st.one_of(
    JSON_VALUES,
    nested_28x28(PIXEL_NUMBERS),
    nested_28x28(NUMBERS),
    nested_28x28(JSON_SCALARS),
    st.binary(max_size=50),
)
# Column names are text in JSON, and may be numbers in a DataFrame made from an array.
COLUMN_NAMES = st.sampled_from(["image", "pixels"]) | st.text(max_size=6) | st.integers(0, 2)
JSON_ROWS = st.one_of(
    st.fixed_dictionaries({"pixels": ROW_VALUES}),
    st.fixed_dictionaries({"image": ROW_VALUES}),
    st.dictionaries(COLUMN_NAMES, ROW_VALUES, max_size=3),
)


@FUZZ
@given(rows=st.lists(JSON_ROWS, min_size=1, max_size=3), form=ROW_FORMS)
def test_json_like_rows_predict_or_are_refused_cleanly(served, rows, form):
    predicts_or_refuses_cleanly(served[0], fed_rows(rows, form), len(rows))
