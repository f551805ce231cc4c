"""Draw the example images of README.md and docs/serving.md (our own drawings, not MNIST) into
examples/, and the preprocessing figure into docs/ (so `examples/*` holds digits only).

python examples/make_examples.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from digitml.imaging import image_to_array  # noqa: E402

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"


def seven() -> Image.Image:
    """A pen-drawn seven: thin dark strokes on a large white page."""
    page = Image.new("RGB", (900, 700), (250, 250, 247))
    pen = ImageDraw.Draw(page)
    pen.line([(300, 180), (560, 170), (600, 175)], fill=(25, 25, 60), width=9, joint="curve")
    pen.line([(600, 175), (520, 330), (450, 560)], fill=(25, 25, 60), width=9, joint="curve")
    pen.line([(430, 360), (560, 355)], fill=(25, 25, 60), width=8)
    return page


def three() -> Image.Image:
    """A marker three on a small off-white card, saved as JPEG."""
    card = Image.new("L", (120, 150), 230)
    pen = ImageDraw.Draw(card)
    pen.arc((25, 15, 95, 75), start=200, end=90, fill=20, width=12)
    pen.arc((20, 65, 100, 140), start=270, end=160, fill=20, width=12)
    return card


def zero_icon() -> Image.Image:
    """A red zero on a transparent background."""
    icon = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    ImageDraw.Draw(icon).ellipse((70, 30, 186, 226), outline=(200, 30, 30, 255), width=22)
    return icon


def main() -> None:
    examples = {"seven.png": seven(), "three.jpg": three(), "zero.png": zero_icon()}
    for name, image in examples.items():
        image.save(HERE / name, quality=85) if name.endswith(".jpg") else image.save(HERE / name)
    figure, grid = plt.subplots(2, len(examples), figsize=(3 * len(examples), 6))
    for column, name in enumerate(examples):
        grid[0, column].imshow(Image.open(HERE / name).convert("RGBA"))
        grid[0, column].set_title(f"{name}: what you send")
        grid[1, column].imshow(image_to_array((HERE / name).read_bytes()), cmap="gray")
        grid[1, column].set_title("what the model sees (28x28)")
        for axes in grid[:, column]:
            axes.axis("off")
    figure.tight_layout()
    figure.savefig(DOCS / "preprocessing.png", dpi=80)


if __name__ == "__main__":
    main()
