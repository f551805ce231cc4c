"""Turning what users send into the (n, 28, 28, 1) float arrays in [0, 1] the networks take."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

IMAGE_SIZE = 28


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
        raise ImageInputError(
            f"{where}: expected shape 28x28, got {'x'.join(map(str, array.shape))}"
        )
    if not np.isfinite(array).all():
        raise ImageInputError(f"{where}: contains NaN or infinity")
    if array.min() < 0 or array.max() > 255:
        raise ImageInputError(
            f"{where}: values must lie in 0-255 (or 0-1), got {array.min():g} to {array.max():g}"
        )
    scale = 1.0 if array.max() <= 1.0 else 255.0
    return (array / scale).astype(np.float32)


def pixels_batch(rows: Iterable[Any]) -> np.ndarray:
    """Stack many pixel arrays into model input (n, 28, 28, 1); raise naming the bad row."""
    arrays = [
        pixels_to_array(pixels, where=f"row {index}: pixels") for index, pixels in enumerate(rows)
    ]
    if not arrays:
        raise ImageInputError("the batch is empty: send at least one row")
    return np.stack(arrays)[..., np.newaxis]
