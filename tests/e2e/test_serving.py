"""The served model over REST: a real `mlflow models serve` on loopback, good and bad requests."""

import base64
import json
import struct
import zlib

import numpy as np
import pytest
from drawings import encoded
from PIL import Image
from serving import ModelServer

from conftest import require_mnist
from digitml.data import as_pixels, load_mnist_dir
from digitml.imaging import MAX_BATCH, MAX_IMAGE_BYTES, MAX_REQUEST_PIXELS


@pytest.fixture(scope="module")
def server(mnist_model):
    _, _, model_path = mnist_model
    running = ModelServer(model_path)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def mnist_test():
    data = load_mnist_dir(require_mnist())
    return as_pixels(data.test_images[:8]), data.test_labels[:8]


def encode(image: Image.Image, fmt: str = "PNG") -> str:
    return base64.b64encode(encoded(image, fmt)).decode()


def drawn(digit: np.ndarray) -> Image.Image:
    """Dark digit on a large white canvas, as someone would draw it."""
    large = Image.fromarray(255 - digit).resize((280, 280), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (500, 400), 255)
    canvas.paste(large, (60, 40))
    return canvas


def records(*rows) -> str:
    return json.dumps({"dataframe_records": list(rows)})


def png_with_size(width: int, height: int) -> str:
    """A syntactically valid PNG header declaring the given size (no usable pixel data)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(data).decode()


def test_image_records_are_classified(server, mnist_test):
    images, labels = mnist_test
    status, body = server.post(records(*[{"image": encode(drawn(digit))} for digit in images]))
    assert status == 200, body
    predictions = json.loads(body)["predictions"]
    assert [p["digit"] for p in predictions] == labels.tolist()
    for prediction in predictions:
        assert len(prediction["probabilities"]) == 10
        assert prediction["confidence"] == pytest.approx(max(prediction["probabilities"]))


def test_a_batch_in_dataframe_split_form(server, mnist_test):
    images, labels = mnist_test
    payload = {
        "dataframe_split": {
            "columns": ["image"],
            "data": [[encode(drawn(d), "JPEG")] for d in images],
        }
    }
    status, body = server.post(json.dumps(payload))
    assert status == 200, body
    assert [p["digit"] for p in json.loads(body)["predictions"]] == labels.tolist()


def test_pixels_rows_are_classified(server, mnist_test):
    images, labels = mnist_test
    status, body = server.post(records(*[{"pixels": digit.tolist()} for digit in images]))
    assert status == 200, body
    assert [p["digit"] for p in json.loads(body)["predictions"]] == labels.tolist()
    packed = [{"pixels": base64.b64encode(digit.tobytes()).decode()} for digit in images]
    status, packed_body = server.post(records(*packed))
    assert status == 200 and json.loads(packed_body) == json.loads(body)


def test_image_and_pixels_rows_mix_in_one_batch(server, mnist_test):
    images, labels = mnist_test
    status, body = server.post(
        records(
            {"image": encode(drawn(images[0])), "pixels": None},
            {"image": None, "pixels": images[1].tolist()},
        )
    )
    assert status == 200, body
    assert [p["digit"] for p in json.loads(body)["predictions"]] == labels[:2].tolist()


BLANK = encode(Image.new("L", (200, 200), 255))
PAGE = encode(Image.new("L", (4000, 4000), 255))  # 16 M pixels in a few kB
BAD_REQUESTS = {
    "malformed JSON": ('{"dataframe_records": [', "JSON"),
    "JSON that is not an object": ("[1, 2, 3]", "must be a JSON dictionary"),
    "unknown top-level key": ('{"frames": []}', "exactly one of the input fields"),
    "unknown column": (records({"picture": BLANK}), "unknown column 'picture'"),
    "unknown column in split form": (
        json.dumps({"dataframe_split": {"columns": ["img"], "data": [["x"]]}}),
        "unknown column 'img'",
    ),
    "row without image or pixels": (records({}), "row 0: needs an 'image' or a 'pixels' value"),
    "both image and pixels": (records({"image": BLANK, "pixels": [[0] * 28] * 28}), "not both"),
    "neither value given": (
        records({"image": None, "pixels": None}),
        "needs an 'image' or a 'pixels'",
    ),
    "invalid base64": (records({"image": "%%% not base64 %%%"}), "not valid base64"),
    "base64 of text": (
        records({"image": base64.b64encode(b"plain text").decode()}),
        "not a readable image",
    ),
    "truncated PNG": (records({"image": BLANK[:60]}), "row 0: image: not a readable image"),
    "empty image string": (records({"image": ""}), "empty"),
    "image as a number": (records({"image": 12345}), "expected image bytes"),
    "image as a list": (records({"image": [1, 2, 3]}), "expected image bytes or base64 text"),
    "zero-size image": (records({"image": png_with_size(0, 0)}), "not a readable image"),
    "image over the pixel limit": (
        records({"image": encode(Image.new("L", (4100, 4100), 255))}),
        "row 0: image: 4100x4100 pixels, over the limit of",
    ),
    "images over the request's pixel budget": (
        records(*[{"image": PAGE}] * (MAX_REQUEST_PIXELS // 16_000_000 + 1)),
        f"pixels, over the limit of {MAX_REQUEST_PIXELS:,} per request",
    ),
    "image over the byte limit": (
        records({"image": "A" * (MAX_IMAGE_BYTES * 4 // 3 + 400)}),
        "limit",
    ),
    "decompression bomb": (
        records({"image": encode(Image.new("1", (20_000, 20_000), 1))}),
        "limit|too large",
    ),
    "all-white image": (records({"image": BLANK}), "blank"),
    "all-black image": (records({"image": encode(Image.new("RGB", (64, 64), (0, 0, 0)))}), "blank"),
    "transparent-only image": (
        records({"image": encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)))}),
        "blank",
    ),
    "pixels 27x28": (records({"pixels": [[0] * 28] * 27}), "28x28"),
    "pixels 3D": (records({"pixels": [[[0] * 28] * 28] * 2}), "28x28"),
    "pixels flat short list": (records({"pixels": list(range(10))}), "28x28"),
    "pixels scalar": (records({"pixels": 7}), "row 0: pixels: expected shape 28x28, got a scalar"),
    "pixels NaN": (
        '{"dataframe_records": [{"pixels": ' + json.dumps([[float("nan")] * 28] * 28) + "}]}",
        "row 0: pixels: contains NaN or infinity",
    ),
    "pixels infinite": (
        '{"dataframe_records": [{"pixels": ' + json.dumps([[float("inf")] * 28] * 28) + "}]}",
        "row 0: pixels: contains NaN or infinity",
    ),
    "a bad row after good ones": (
        records(*[{"pixels": [[0] * 28] * 28}] * 2, {"pixels": [[0] * 28] * 27}),
        "row 2: pixels: expected shape 28x28, got 27x28",
    ),
    "pixels over 255": (records({"pixels": [[300] * 28] * 28}), "0-255"),
    "pixels negative": (records({"pixels": [[-5] * 28] * 28}), "0-255"),
    "pixels as text": (records({"pixels": [["dark"] * 28] * 28}), "not a numeric 28x28 array"),
    "pixels as base64 of 27x28 bytes": (
        records({"pixels": base64.b64encode(bytes(27 * 28)).decode()}),
        "row 0: pixels: base64 of 756 bytes, expected 784 (28x28 uint8)",
    ),
    "empty batch": (records(), "empty"),
    "empty split batch": (
        json.dumps({"dataframe_split": {"columns": ["image"], "data": []}}),
        "empty",
    ),
    "batch over the row limit": (records(*[{"image": "x"}] * (MAX_BATCH + 1)), "at most"),
}


@pytest.mark.parametrize("body, expected", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request_gets_a_4xx_json_message_and_the_server_keeps_answering(server, body, expected):
    status, text = server.post(body)
    assert 400 <= status < 500, text
    reply = json.loads(text)
    assert reply.get("message")
    assert "Traceback" not in text and "stack_trace" not in reply
    assert any(part in reply["message"] for part in expected.split("|")), reply["message"]
    assert server.alive()


def test_wrong_content_type_is_refused(server):
    status, _ = server.post("image=seven.png", content_type="text/plain")
    assert 400 <= status < 500
