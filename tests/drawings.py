"""Real-world-looking image files made from MNIST digits (uint8, white on black, 28x28): what a
web canvas, a phone camera or an icon editor sends. Used by the tests and the serving benchmark;
nothing here is stored."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

CANVAS_SIZE = (1050, 800)
PHOTO_SIZE = (3000, 4000)  # a phone photo held upright


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def big_stroke_mask(digit: np.ndarray, scale: int) -> Image.Image:
    """The digit's ink as a smooth binary mask `scale` times larger."""
    large = Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    return large.point(lambda value: 255 if value > 100 else 0)


def canvas_png(digit: np.ndarray) -> bytes:
    """A digit drawn on a 1050x800 web canvas: a thin dark stroke (6-10 px) on white, RGB."""
    mask = big_stroke_mask(digit, 24).filter(ImageFilter.MinFilter(17))  # 672 px tall
    page = Image.new("RGB", CANVAS_SIZE, (255, 255, 255))
    page.paste(Image.new("RGB", mask.size, (25, 25, 30)), (250, 70), mask)
    return encoded(page)


def photo_jpeg(digit: np.ndarray, seed: int = 0) -> bytes:
    """A phone photo of the digit written on paper: 3000x4000 JPEG, grey paper lit unevenly,
    a soft pen stroke, sensor noise."""
    rng = np.random.default_rng(seed)
    width, height = PHOTO_SIZE
    across, down = np.meshgrid(np.linspace(0, 1, width // 10), np.linspace(0, 1, height // 10))
    light = (150 + 50 * across + 30 * down).astype(np.uint8)  # brighter towards one corner
    page = Image.fromarray(light).resize(PHOTO_SIZE, Image.Resampling.BILINEAR)
    mask = big_stroke_mask(digit, 60).filter(ImageFilter.GaussianBlur(4))
    page.paste(Image.new("L", mask.size, 55), (660, 1100), mask)
    noise = rng.integers(-12, 13, size=(height, width), dtype=np.int16)
    noisy = np.clip(np.asarray(page, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return encoded(Image.fromarray(noisy).convert("RGB"), "JPEG", quality=85)


def icon_png(digit: np.ndarray) -> bytes:
    """A 64x64 RGBA icon: blue ink on a transparent background."""
    mask = Image.fromarray(digit).resize((64, 64), Image.Resampling.BICUBIC)
    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    icon.paste(Image.new("RGBA", (64, 64), (20, 40, 200, 255)), (0, 0), mask)
    return encoded(icon)


def mnist_png(digit: np.ndarray) -> bytes:
    """The 28x28 digit as a PNG, dark on white."""
    return encoded(Image.fromarray(255 - digit))
