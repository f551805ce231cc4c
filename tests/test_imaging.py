"""Preprocessing of real-looking images (made here from genuine MNIST test digits) and the
errors for inputs that are no digit image at all."""

import base64
import io

import mlflow
import numpy as np
import pandas as pd
import pytest
from drawings import big_stroke_mask, canvas_png, photo_jpeg
from drawings import encoded as png
from PIL import Image, ImageFilter

from conftest import require_mnist
from digitml.data import as_pixels, load_mnist_dir
from digitml.imaging import (
    MAX_IMAGE_PIXELS,
    MAX_REQUEST_PIXELS,
    ImageInputError,
    image_array,
    image_to_array,
    open_image,
    pixels_to_array,
    rows_to_batch,
)

SAMPLES = 30


@pytest.fixture(scope="module")
def digits():
    """(uint8 images, labels) of the first MNIST test digits."""
    data = load_mnist_dir(require_mnist())
    images = as_pixels(data.test_images[:SAMPLES])
    return images, data.test_labels[:SAMPLES]


@pytest.fixture(scope="module")
def classifier(mnist_model):
    _, _, model_path = mnist_model
    return mlflow.pyfunc.load_model(model_path)


def thin_dark_on_large_white(digit: np.ndarray) -> bytes:
    """A pen drawing: a dark 3-4 px stroke on a 1000x800 white page, off-centre."""
    mask = big_stroke_mask(digit, 12).filter(ImageFilter.MinFilter(15))
    page = Image.new("L", (1000, 800), 250)
    page.paste(Image.new("L", mask.size, 40), (130, 90), mask)
    return png(page)


def thick_on_small_canvas(digit: np.ndarray) -> bytes:
    """A fat marker digit filling a 24x24 grey-on-white thumbnail."""
    small = Image.fromarray(255 - digit).resize((24, 24), Image.Resampling.BILINEAR)
    return png(small.filter(ImageFilter.MinFilter(3)))


def rgba_transparent(digit: np.ndarray) -> bytes:
    """Blue ink on a transparent background (an icon)."""
    mask = big_stroke_mask(digit, 6)
    icon = Image.new("RGBA", mask.size, (0, 0, 0, 0))
    icon.paste(Image.new("RGBA", mask.size, (20, 40, 200, 255)), (0, 0), mask)
    return png(icon)


def off_centre_non_square(digit: np.ndarray) -> bytes:
    """Black ink in the corner of a wide white banner."""
    mask = big_stroke_mask(digit, 4)
    banner = Image.new("RGB", (600, 180), (255, 255, 255))
    banner.paste(Image.new("RGB", mask.size, (0, 0, 0)), (470, 60), mask)
    return png(banner)


def inverted_mnist(digit: np.ndarray) -> bytes:
    """An MNIST digit saved as-is: white on black, 28x28."""
    return png(Image.fromarray(digit))


def noisy_jpeg(digit: np.ndarray) -> bytes:
    """A phone snapshot: dark ink on off-white paper with noise, JPEG quality 40."""
    mask = big_stroke_mask(digit, 8)
    page = Image.new("L", (300, 260), 235)
    page.paste(Image.new("L", mask.size, 50), (40, 20), mask)
    noise = np.random.default_rng(0).normal(0, 12, (260, 300))
    noisy = np.clip(np.asarray(page, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return png(Image.fromarray(noisy).convert("RGB"), fmt="JPEG", quality=40)


MAKERS = [
    thin_dark_on_large_white,
    thick_on_small_canvas,
    rgba_transparent,
    off_centre_non_square,
    inverted_mnist,
    noisy_jpeg,
]


@pytest.mark.parametrize("make", MAKERS, ids=lambda make: make.__name__)
def test_real_looking_images_become_mnist_like_digits(digits, make):
    images, _ = digits
    for digit in images[:10]:
        seen = image_to_array(make(digit))
        assert seen.shape == (28, 28) and seen.dtype == np.float32
        assert seen.max() == pytest.approx(1.0)
        rows, cols = np.nonzero(seen > 0.1)
        assert max(rows.max() - rows.min(), cols.max() - cols.min()) in range(15, 21)
        centre = np.average(np.indices(seen.shape).reshape(2, -1), axis=1, weights=seen.ravel())
        assert np.abs(centre - 13.5).max() <= 1.0


@pytest.mark.parametrize("make", MAKERS, ids=lambda make: make.__name__)
def test_a_trained_model_reads_real_looking_images(digits, classifier, make):
    images, labels = digits
    frame = pd.DataFrame({"image": [make(digit) for digit in images]})
    predicted = classifier.predict(frame)["digit"].to_numpy()
    assert (predicted == labels).mean() >= 0.9


def test_the_naive_pipeline_fails_where_ours_works(digits, classifier):
    """Grey, resize to 28x28, divide by 255: what the reference app did."""
    images, labels = digits
    files = [thin_dark_on_large_white(digit) for digit in images]
    naive = [
        np.asarray(Image.open(io.BytesIO(data)).convert("L").resize((28, 28)), dtype=np.float32)
        / 255
        for data in files
    ]
    naive_accuracy = (classifier.predict(pd.DataFrame({"pixels": naive}))["digit"] == labels).mean()
    ours = (classifier.predict(pd.DataFrame({"image": files}))["digit"] == labels).mean()
    assert naive_accuracy < 0.5 < 0.9 <= ours


@pytest.mark.parametrize("make", [canvas_png, photo_jpeg], ids=lambda make: make.__name__)
def test_a_trained_model_reads_full_size_canvases_and_photos(digits, classifier, make):
    images, labels = digits
    frame = pd.DataFrame({"image": [make(digit) for digit in images[:5]]})
    assert classifier.predict(frame)["digit"].tolist() == labels[:5].tolist()


def test_a_large_jpeg_is_decoded_scaled_down_and_in_grey(digits):
    image = open_image(photo_jpeg(digits[0][0]))
    assert image.size == (750, 1000) and image.mode == "L"  # 3000x4000 at 1/4
    assert image_array(image).shape == (28, 28)


def test_a_request_over_the_pixel_budget_is_refused_before_any_image_is_decoded():
    page = png(Image.new("L", (4000, 4000), 255))  # 16 M pixels, a few kB
    cut_short = png(Image.new("L", (4000, 4000), 128))[:-200]  # a readable header, no end
    rows = [{"image": page}] * (MAX_REQUEST_PIXELS // 16_000_000) + [{"image": cut_short}]
    with pytest.raises(ImageInputError) as refused:
        rows_to_batch(rows)
    assert str(refused.value) == (
        f"the request's images decode to {len(rows) * 16_000_000:,} pixels, over the limit of "
        f"{MAX_REQUEST_PIXELS:,} per request: send them in smaller batches"
    )
    with pytest.raises(ImageInputError, match="row 0: image: the image is blank"):
        rows_to_batch(rows[:1] + rows[-1:])  # under the budget, each image is decoded in turn
    with pytest.raises(ImageInputError, match="row 0: image: not a readable image"):
        rows_to_batch(rows[-1:])


def test_a_batchs_images_are_prepared_side_by_side_and_kept_in_row_order(digits):
    files = [canvas_png(digit) for digit in digits[0][:6]]
    one_at_a_time = np.stack([image_to_array(data) for data in files])
    rows = [{"image": data} for data in files]
    rows.insert(2, {"pixels": digits[0][6]})
    batch = rows_to_batch(rows)[..., 0]
    assert np.array_equal(np.delete(batch, 2, axis=0), one_at_a_time)
    assert np.array_equal(batch[2], pixels_to_array(digits[0][6]))
    blank = png(Image.new("L", (64, 64), 255))
    cut_short = png(Image.new("L", (400, 400), 128))[:-200]  # fails only when decoded
    with pytest.raises(ImageInputError, match="row 3: image: the image is blank"):
        rows_to_batch(rows[:3] + [{"image": blank}] + rows[3:5] + [{"image": cut_short}])


def test_base64_text_is_read_like_bytes(digits):
    image = inverted_mnist(digits[0][0])
    assert np.array_equal(image_to_array(base64.b64encode(image).decode()), image_to_array(image))


def test_palette_gif_and_bmp_and_webp_are_read(digits):
    digit = Image.fromarray(digits[0][0])
    for fmt in ("GIF", "BMP", "WEBP"):
        assert image_to_array(
            png(digit.convert("P") if fmt == "GIF" else digit, fmt=fmt)
        ).shape == (28, 28)


@pytest.mark.parametrize(
    "value, message",
    [
        (b"", "empty"),
        ("", "empty"),
        ("not base64!!", "not valid base64"),
        (base64.b64encode(b"hello, not an image").decode(), "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image"),
        (png(Image.new("L", (300, 200), 255)), "blank"),
        (png(Image.new("L", (50, 50), 0)), "blank"),
        (png(Image.new("L", (4100, 4100), 255)), "over the limit"),
        (12345, "expected image bytes"),
    ],
)
def test_bad_images_are_named(value, message):
    with pytest.raises(ImageInputError, match=message):
        image_to_array(value)


def test_decompression_bomb_is_refused_before_decoding():
    huge = Image.new("1", (20_000, 20_000), 1)  # a few kB as PNG, 400 M pixels decoded
    data = png(huge)
    assert len(data) < 200_000 and 20_000 * 20_000 > MAX_IMAGE_PIXELS
    with pytest.raises(ImageInputError, match="over the limit|too large"):
        image_to_array(data)


@pytest.mark.parametrize(
    "pixels, message",
    [
        (np.zeros((28, 27)), "28x27"),
        (np.zeros((3, 28, 28)), "3x28x28"),
        (np.full((28, 28), np.inf), "NaN or infinity"),
        (np.full((28, 28), -1.0), "0-255"),
        ([["a"] * 28] * 28, "not a numeric"),
        ("%%% not base64", "not valid base64"),
        (base64.b64encode(bytes(28 * 28 + 1)).decode(), "base64 of 785 bytes, expected 784"),
    ],
)
def test_bad_pixels_are_named(pixels, message):
    with pytest.raises(ImageInputError, match=message):
        pixels_to_array(pixels)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "empty"),
        ([{"image": None, "pixels": None}], "needs an 'image' or a 'pixels'"),
        ([{"image": b"x", "pixels": [[0] * 28] * 28}], "not both"),
        ([{"picture": b"x"}], "unknown column 'picture'"),
    ],
)
def test_bad_rows_are_named(rows, message):
    with pytest.raises(ImageInputError, match=message):
        rows_to_batch(rows)
