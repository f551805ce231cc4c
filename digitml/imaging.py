"""Turning what users send into the 28x28 float arrays in [0, 1] the networks take.

Real images are prepared the way MNIST itself was made: composite transparency on white,
grey-scale, take the ink as the difference from the page's level (inverted when the page is
light; the level is a plane, for photos lit unevenly), drop faint noise, crop to the ink,
scale the longest side to 20 px keeping the aspect ratio (thickening thin strokes first when
shrinking a lot), and centre the 20x20 box in 28x28 by its centre of mass.

The cost does not grow with the image beyond decoding: a JPEG is decoded at 1/2, 1/4 or 1/8
scale when it is large, the background and the digit's box are found on a copy at most
`OVERVIEW_SIDE` px wide and high, and only the digit's box, cut from the decoded image and shrunk
to at most `DETAIL_SIDE` px, is worked on in floating point. A request's images are sized from
their headers first, and a request whose images decode to too many pixels is refused up front.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from numbers import Real
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

IMAGE_SIZE = 28
DIGIT_BOX = 20
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # 10 MiB of encoded image
MAX_IMAGE_PIXELS = 4096 * 4096  # one image's size; larger images are refused before decoding
# The pixels all the images of one request decode to (a large JPEG's scaled down): about 10 s of
# work on one core at most, well under the 60 s after which `mlflow models serve` gives up on
# a request (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT).
MAX_REQUEST_PIXELS = 200_000_000
MAX_BATCH = 10_000
DRAFT_SIDE = 800  # a large JPEG is decoded scaled down, to no fewer px than this on its long side
OVERVIEW_SIDE = 256  # the whole image is looked at this small to find its background and digit
DETAIL_SIDE = 80  # the digit's box is worked on at most this large (4x the 20 px it ends as)
NOISE_FRACTION = 0.25  # ink fainter than this share of the strongest ink is background noise
MIN_CONTRAST = 32  # on 0-255: less ink contrast than this means the image is blank
TARGET_STROKE = 2.0  # MNIST strokes are about 2-3 px wide in the 20 px box


class ImageInputError(ValueError):
    """An input cannot be turned into a digit image; the message says which and why."""


def pixels_to_array(pixels: Any, where: str = "pixels") -> np.ndarray:
    """One 28x28 MNIST-style array (white on black) to float32 [0, 1] (28, 28): numbers 0-255 or
    0-1, or base64 text of the 784 bytes (uint8, row by row), which JSON carries ~5x faster."""
    if isinstance(pixels, str):
        return packed_pixels(pixels, where)
    try:
        array = np.asarray(pixels)
    except (TypeError, ValueError) as error:
        raise ImageInputError(f"{where}: not a numeric 28x28 array ({error})") from error
    if array.size == IMAGE_SIZE * IMAGE_SIZE and array.ndim in (1, 3):
        array = array.reshape(IMAGE_SIZE, IMAGE_SIZE)
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE):
        shape = "x".join(map(str, array.shape)) or "a scalar"
        raise ImageInputError(f"{where}: expected shape 28x28, got {shape}")
    array = pixel_values(array, where)
    if not np.isfinite(array).all():
        raise ImageInputError(f"{where}: contains NaN or infinity")
    if array.min() < 0 or array.max() > 255:
        raise ImageInputError(
            f"{where}: values must lie in 0-255 (or 0-1), got {array.min():g} to {array.max():g}"
        )
    array = array.astype(np.float32)
    return array if array.max() <= 1.0 else array / np.float32(255)


def pixel_values(array: np.ndarray, where: str = "pixels") -> np.ndarray:
    """A 28x28 array's values as float64; only real numbers are pixels, not text, dates or
    complex numbers (which NumPy would quietly turn into numbers)."""
    if array.dtype.kind == "O":
        others = {type(value).__name__ for value in array.flat if not isinstance(value, Real)}
    else:
        others = set() if array.dtype.kind in "biuf" else {array.dtype.name}
    if others:
        raise ImageInputError(
            f"{where}: not a numeric 28x28 array (holds {', '.join(sorted(others))} values)"
        )
    try:
        return array.astype(np.float64)
    except OverflowError as error:  # a Python int beyond float64's range
        raise ImageInputError(f"{where}: values must lie in 0-255 (or 0-1) ({error})") from error


def packed_pixels(text: str, where: str = "pixels") -> np.ndarray:
    """28x28 pixels sent as base64 text of 784 bytes (uint8, 0-255, row by row)."""
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageInputError(f"{where}: not valid base64 ({error})") from error
    if len(data) != IMAGE_SIZE * IMAGE_SIZE:
        raise ImageInputError(f"{where}: base64 of {len(data):,} bytes, expected 784 (28x28 uint8)")
    return np.frombuffer(data, dtype=np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE) / np.float32(255)


def image_bytes(value: Any, where: str = "image") -> bytes:
    """Raw bytes of an image given as bytes or as base64 text (as JSON carries it)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        if len(value) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise ImageInputError(f"{where}: larger than the {MAX_IMAGE_BYTES // 2**20} MiB limit")
        try:
            data = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError) as error:
            raise ImageInputError(f"{where}: not valid base64 ({error})") from error
    else:
        raise ImageInputError(
            f"{where}: expected image bytes or base64 text, got {type(value).__name__}"
        )
    if not data:
        raise ImageInputError(f"{where}: empty (0 bytes)")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageInputError(
            f"{where}: {len(data):,} bytes, over the {MAX_IMAGE_BYTES // 2**20} MiB limit"
        )
    return data


def open_image(data: bytes, where: str = "image") -> Image.Image:
    """The image with only its header read, refusing non-images, empty and oversized images.

    A large JPEG is set to decode at the smallest DCT scale (1/2, 1/4 or 1/8) that keeps
    `DRAFT_SIDE` px, in grey (its luminance, what `grey_on_white` would compute): its `size` is
    then the size it will decode to."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ImageInputError(f"{where}: too large to decode safely ({error})") from error
    except UnidentifiedImageError as error:
        raise ImageInputError(
            f"{where}: not a readable image (PNG, JPEG, BMP, GIF or WebP expected)"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageInputError(f"{where}: not a readable image ({error})") from error
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageInputError(
            f"{where}: {width}x{height} pixels, over the limit of {MAX_IMAGE_PIXELS:,} pixels"
        )
    if width == 0 or height == 0:
        raise ImageInputError(f"{where}: the image is empty ({width}x{height})")
    if image.format == "JPEG" and max(width, height) >= 2 * DRAFT_SIDE:
        scale = max(width, height) / DRAFT_SIDE
        image.draft("L", (math.ceil(width / scale), math.ceil(height / scale)))
    return image


def load_image(image: Image.Image, where: str = "image") -> Image.Image:
    """Decode an image `open_image` opened."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageInputError(f"{where}: not a readable image ({error})") from error
    return image


def grey_on_white(image: Image.Image) -> Image.Image:
    """The image in grey levels ("L"), any transparency composited onto white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("L")


def shrunk(image: Image.Image, side: int) -> tuple[Image.Image, int]:
    """The image box-averaged by the smallest integer factor that fits it in side x side, and
    that factor (1: the image itself)."""
    factor = math.ceil(max(image.size) / side)
    return (image.reduce(factor), factor) if factor > 1 else (image, 1)


def page_plane(grey: np.ndarray) -> tuple[float, float, float]:
    """The page's grey level as a plane (level at the centre, change from the top edge to the
    bottom, change from the left edge to the right) through the medians of the four edges: a
    photographed page is often lit more on one side, and a median ignores ink touching an edge."""
    top, bottom, left, right = (
        float(np.median(edge)) for edge in (grey[0], grey[-1], grey[:, 0], grey[:, -1])
    )
    return (top + bottom + left + right) / 4, bottom - top, right - left


def page_levels(
    plane: tuple[float, float, float], box: tuple[int, int, int, int], factor: int, size: tuple
) -> np.ndarray:
    """The plane at the pixels of `box` (left, top, right, bottom of an image `size` = (width,
    height)) shrunk by `factor`: one level per shrunk pixel, at its centre."""
    centre, down, across = plane
    left, top, right, bottom = box
    width, height = size
    rows = (top + (np.arange(math.ceil((bottom - top) / factor)) + 0.5) * factor) / height
    cols = (left + (np.arange(math.ceil((right - left) / factor)) + 0.5) * factor) / width
    return (centre + down * (rows[:, None] - 0.5) + across * (cols[None, :] - 0.5)).astype(
        np.float32
    )


def ink_map(grey: np.ndarray, page: np.ndarray, light: bool, where: str = "image") -> np.ndarray:
    """Ink strength 0-255 on black: the difference from the page's level (darker than a light
    page, lighter than a dark one), with ink fainter than `NOISE_FRACTION` of the strongest
    dropped as noise."""
    ink = np.clip(page - grey if light else grey - page, 0, None)
    strongest = float(ink.max())
    if strongest < MIN_CONTRAST:
        raise ImageInputError(f"{where}: the image is blank (no digit found)")
    ink[ink < NOISE_FRACTION * strongest] = 0
    return ink * (255.0 / strongest)


def digit_detail(grey: Image.Image, where: str = "image") -> np.ndarray:
    """The ink of the digit's box: found on an overview, cut from `grey` with a margin of one
    overview pixel, and shrunk to at most `DETAIL_SIDE` px."""
    whole = (0, 0, grey.width, grey.height)
    overview, factor = shrunk(grey, OVERVIEW_SIDE)
    overview_grey = np.asarray(overview, dtype=np.float32)
    plane = page_plane(overview_grey)
    light = plane[0] >= 128
    page = page_levels(plane, whole, factor, grey.size)
    rows, cols = np.nonzero(ink_map(overview_grey, page, light, where))
    box = (
        max(0, (cols.min() - 1) * factor),
        max(0, (rows.min() - 1) * factor),
        min(grey.width, (cols.max() + 2) * factor),
        min(grey.height, (rows.max() + 2) * factor),
    )
    detail, factor = shrunk(grey.crop(box), DETAIL_SIDE)
    page = page_levels(plane, box, factor, grey.size)
    return ink_map(np.asarray(detail, dtype=np.float32), page, light, where)


def stroke_width(mask: np.ndarray) -> float:
    """Approximate stroke width: ink area over half its boundary length."""
    padded = np.pad(mask, 1)
    interior = (
        padded[1:-1, 1:-1]
        & padded[:-2, 1:-1]
        & padded[2:, 1:-1]
        & padded[1:-1, :-2]
        & padded[1:-1, 2:]
    )
    edges = int(mask.sum() - interior.sum())
    return 2.0 * mask.sum() / max(edges, 1)


def to_mnist(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, fit the longest side to 20 px, centre by mass in 28x28; float [0, 1]."""
    rows, cols = np.nonzero(ink)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = ink.shape
    shrink = max(height, width) / DIGIT_BOX
    crop = Image.fromarray(ink.astype(np.uint8))
    width_needed = TARGET_STROKE * shrink
    current = stroke_width(ink > 0)
    if shrink > 2 and current < width_needed:
        size = int(min(width_needed - current, 4 * shrink)) | 1  # MaxFilter takes odd sizes
        if size >= 3:
            crop = crop.filter(ImageFilter.MaxFilter(size))
    scale = DIGIT_BOX / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(crop.resize(new_size, Image.Resampling.LANCZOS), dtype=np.float64)
    small = np.clip(small, 0, 255)
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    top, left = (IMAGE_SIZE - new_size[1]) // 2, (IMAGE_SIZE - new_size[0]) // 2
    canvas[top : top + new_size[1], left : left + new_size[0]] = small
    canvas = _centre_of_mass_shift(canvas)
    return (canvas / max(canvas.max(), 1e-9)).astype(np.float32)


def _centre_of_mass_shift(canvas: np.ndarray) -> np.ndarray:
    total = canvas.sum()
    grid_rows, grid_cols = np.indices(canvas.shape)
    centre_row = (grid_rows * canvas).sum() / total
    centre_col = (grid_cols * canvas).sum() / total
    occupied_rows, occupied_cols = np.nonzero(canvas)
    shift_row = int(round((IMAGE_SIZE - 1) / 2 - centre_row))
    shift_col = int(round((IMAGE_SIZE - 1) / 2 - centre_col))
    # Never push ink off the canvas.
    shift_row = int(np.clip(shift_row, -occupied_rows.min(), IMAGE_SIZE - 1 - occupied_rows.max()))
    shift_col = int(np.clip(shift_col, -occupied_cols.min(), IMAGE_SIZE - 1 - occupied_cols.max()))
    return np.roll(canvas, (shift_row, shift_col), axis=(0, 1))


def image_to_array(value: Any, where: str = "image") -> np.ndarray:
    """Image file bytes (or base64 text) to the 28x28 float array the model sees."""
    return image_array(open_image(image_bytes(value, where), where), where)


def image_array(image: Image.Image, where: str = "image") -> np.ndarray:
    """An opened image to the 28x28 float array the model sees."""
    return to_mnist(digit_detail(grey_on_white(load_image(image, where)), where))


def _missing(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, float) and np.isnan(value)


def rows_to_batch(rows: list[dict[str, Any]]) -> np.ndarray:
    """Rows of {'image': bytes|base64} or {'pixels': 28x28} to model input (n, 28, 28, 1).

    Every row is checked, and every image's size read from its header, before any is decoded."""
    check_row_count(len(rows))
    inputs = [row_input(row, f"row {index}") for index, row in enumerate(rows)]
    total = sum(item.width * item.height for item in inputs if isinstance(item, Image.Image))
    if total > MAX_REQUEST_PIXELS:
        raise ImageInputError(
            f"the request's images decode to {total:,} pixels, over the limit of "
            f"{MAX_REQUEST_PIXELS:,} per request: send them in smaller batches"
        )
    images = {index: item for index, item in enumerate(inputs) if isinstance(item, Image.Image)}
    wheres = [f"row {index}: image" for index in images]
    prepared = _row_pool().map(image_array, images.values(), wheres)
    decoded = dict(zip(images, prepared, strict=True))
    arrays = [decoded.get(index, item) for index, item in enumerate(inputs)]
    return np.stack(arrays)[..., np.newaxis]


def check_row_count(count: int) -> None:
    """Refuse a request of no rows or of more than `MAX_BATCH`."""
    if not count:
        raise ImageInputError("the batch is empty: send at least one row")
    if count > MAX_BATCH:
        raise ImageInputError(f"{count:,} rows: at most {MAX_BATCH:,} per request")


@cache
def _row_pool() -> ThreadPoolExecutor:
    """Threads that prepare a request's rows side by side: decoding and resizing, most of the
    work, run in Pillow's C code without Python's lock, so a batch uses every core even when
    `mlflow models serve` runs one worker process."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="digitml-rows")


def row_input(row: dict[str, Any], where: str) -> Image.Image | np.ndarray:
    """One row's image, opened but not decoded, or its pixels as the model's array."""
    given = {key for key, value in row.items() if not _missing(value)}
    unknown = [name for name in row if name not in ("image", "pixels")]
    if unknown:
        raise ImageInputError(
            f"{where}: unknown column '{unknown[0]}' (expected 'image' or 'pixels')"
        )
    if given == {"image"}:
        return open_image(image_bytes(row["image"], f"{where}: image"), f"{where}: image")
    if given == {"pixels"}:
        return pixels_to_array(row["pixels"], where=f"{where}: pixels")
    if given:
        raise ImageInputError(f"{where}: give either 'image' or 'pixels', not both")
    raise ImageInputError(f"{where}: needs an 'image' or a 'pixels' value")
