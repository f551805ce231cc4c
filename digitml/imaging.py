"""Turning what users send into the 28x28 float arrays in [0, 1] the networks take.

Real images are prepared the way MNIST itself was made: composite transparency on white,
grey-scale, invert when the background is light, drop faint background noise, crop to the ink,
scale the longest side to 20 px keeping the aspect ratio (thickening thin strokes first when
shrinking a lot), and centre the 20x20 box in 28x28 by its centre of mass.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

IMAGE_SIZE = 28
DIGIT_BOX = 20
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # 10 MiB of encoded image
MAX_IMAGE_PIXELS = 4096 * 4096  # decoded size; larger images are refused before decoding
MAX_BATCH = 10_000
NOISE_FRACTION = 0.25  # ink fainter than this share of the strongest ink is background noise
MIN_CONTRAST = 32  # on 0-255: less ink contrast than this means the image is blank
TARGET_STROKE = 2.0  # MNIST strokes are about 2-3 px wide in the 20 px box


class ImageInputError(ValueError):
    """An input cannot be turned into a digit image; the message says which and why."""


def pixels_to_array(pixels: Any, where: str = "pixels") -> np.ndarray:
    """One 28x28 MNIST-style array (white on black), 0-255 or 0-1, to float32 [0, 1] (28, 28)."""
    try:
        array = np.asarray(
            [np.asarray(row, dtype=np.float64) for row in pixels]
            if not isinstance(pixels, np.ndarray)
            else pixels,
            dtype=np.float64,
        )
    except (TypeError, ValueError) as error:
        raise ImageInputError(f"{where}: not a numeric 28x28 array ({error})") from error
    if array.size == IMAGE_SIZE * IMAGE_SIZE and array.ndim in (1, 3):
        array = array.reshape(IMAGE_SIZE, IMAGE_SIZE)
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE):
        shape = "x".join(map(str, array.shape)) or "a scalar"
        raise ImageInputError(f"{where}: expected shape 28x28, got {shape}")
    if not np.isfinite(array).all():
        raise ImageInputError(f"{where}: contains NaN or infinity")
    if array.min() < 0 or array.max() > 255:
        raise ImageInputError(
            f"{where}: values must lie in 0-255 (or 0-1), got {array.min():g} to {array.max():g}"
        )
    scale = 1.0 if array.max() <= 1.0 else 255.0
    return (array / scale).astype(np.float32)


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


def decode_image(data: bytes, where: str = "image") -> Image.Image:
    """Open and fully decode an image, refusing non-images, empty and oversized (bomb) images."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageInputError(
                    f"{where}: {width}x{height} pixels, over the limit of {MAX_IMAGE_PIXELS:,} pixels"
                )
            if width == 0 or height == 0:
                raise ImageInputError(f"{where}: the image is empty ({width}x{height})")
            image.load()
    except (
        UnidentifiedImageError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as error:
        reason = (
            "too large to decode safely"
            if "omb" in type(error).__name__
            else "not a readable image"
        )
        raise ImageInputError(
            f"{where}: {reason} (PNG, JPEG, BMP, GIF or WebP expected)"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageInputError(f"{where}: not a readable image ({error})") from error
    return image


def grey_on_white(image: Image.Image) -> np.ndarray:
    """Grey levels 0-255 (float) with any transparency composited onto white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("L"), dtype=np.float64)


def ink_map(grey: np.ndarray, where: str = "image") -> np.ndarray:
    """Ink strength 0-255 on a black background: inverted if the background is light, noise removed."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    ink = grey - background if background < 128 else background - grey
    ink = np.clip(ink, 0, None)
    strongest = float(ink.max())
    if strongest < MIN_CONTRAST:
        raise ImageInputError(f"{where}: the image is blank (no digit found)")
    ink[ink < NOISE_FRACTION * strongest] = 0
    return ink * (255.0 / strongest)


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
    image = decode_image(image_bytes(value, where), where)
    return to_mnist(ink_map(grey_on_white(image), where))


def _missing(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, float) and np.isnan(value)


def rows_to_batch(rows: list[dict[str, Any]]) -> np.ndarray:
    """Rows of {'image': bytes|base64} or {'pixels': 28x28} to model input (n, 28, 28, 1)."""
    if not rows:
        raise ImageInputError("the batch is empty: send at least one row")
    if len(rows) > MAX_BATCH:
        raise ImageInputError(f"{len(rows):,} rows: at most {MAX_BATCH:,} per request")
    arrays = []
    for index, row in enumerate(rows):
        given = {key for key, value in row.items() if not _missing(value)}
        unknown = sorted(set(row) - {"image", "pixels"})
        if unknown:
            raise ImageInputError(
                f"row {index}: unknown column '{unknown[0]}' (expected 'image' or 'pixels')"
            )
        if given == {"image"}:
            arrays.append(image_to_array(row["image"], where=f"row {index}: image"))
        elif given == {"pixels"}:
            arrays.append(pixels_to_array(row["pixels"], where=f"row {index}: pixels"))
        elif given:
            raise ImageInputError(f"row {index}: give either 'image' or 'pixels', not both")
        else:
            raise ImageInputError(f"row {index}: needs an 'image' or a 'pixels' value")
    return np.stack(arrays)[..., np.newaxis]
