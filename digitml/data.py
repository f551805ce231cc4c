"""Digit datasets: verified MNIST (IDX or npz), Keras' download, or sklearn's offline digits."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitml.config import keras_home
from digitml.errors import UserError

IMAGE_SIZE = 28
NUM_CLASSES = 10

# SHA-256 of the official, uncompressed MNIST files (their content, not their gzip bytes).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# The official file each array of Keras' mnist.npz holds.
KERAS_NPZ_STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# What keras.datasets.mnist downloads, and the SHA-256 of those bytes (Keras checks them).
KERAS_MNIST_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
KERAS_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_EXPECTED_COUNTS = {"train": 60_000, "t10k": 10_000}
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # fixed, so the digits test set never depends on the training seed


class DataError(UserError):
    """A data file is missing, truncated, corrupted or not the official content."""


@dataclass
class DigitData:
    """Images are float32 in [0, 1], shape (n, 28, 28, 1), white digit on black; labels int64."""

    name: str
    source: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def digit_data(name: str, source: str, train: tuple, test: tuple) -> DigitData:
    """DigitData from uint8 (images, labels) pairs as the files hold them."""
    return DigitData(
        name=name,
        source=source,
        train_images=to_model_input(train[0]),
        train_labels=train[1].astype(np.int64),
        test_images=to_model_input(test[0]),
        test_labels=test[1].astype(np.int64),
    )


@dataclass
class Splits:
    """What one training run sees: a seeded train/validation split plus the untouched test set."""

    data: DigitData
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray

    @property
    def test_images(self) -> np.ndarray:
        return self.data.test_images

    @property
    def test_labels(self) -> np.ndarray:
        return self.data.test_labels


def load_dataset(name: str, data_dir: str | Path | None = None) -> DigitData:
    """Load `mnist` (from `data_dir` when given, else Keras' cache) or `digits`."""
    if name == "digits":
        return load_digits()
    if data_dir is not None:
        return load_mnist_dir(Path(data_dir))
    return load_mnist_keras(keras_home() / "datasets" / "mnist.npz")


def load_mnist_dir(data_dir: Path) -> DigitData:
    """MNIST from a folder holding the four IDX files (`.gz` or raw) or a Keras `mnist.npz`."""
    if not data_dir.is_dir():
        raise DataError(f"data directory not found: {data_dir}")
    if (data_dir / "mnist.npz").is_file() and not _find_idx(data_dir, "train-images-idx3-ubyte"):
        return load_mnist_npz(data_dir / "mnist.npz")
    arrays = {}
    for split in ("train", "t10k"):
        images_path = _require_idx(data_dir, f"{split}-images-idx3-ubyte")
        labels_path = _require_idx(data_dir, f"{split}-labels-idx1-ubyte")
        images = parse_idx_images(images_path, _verified_bytes(images_path))
        labels = parse_idx_labels(labels_path, _verified_bytes(labels_path))
        if len(images) != len(labels) or len(images) != _EXPECTED_COUNTS[split]:
            raise DataError(
                f"{images_path.name}: {len(images)} images but {labels_path.name} has "
                f"{len(labels)} labels (expected {_EXPECTED_COUNTS[split]})"
            )
        arrays[split] = (images, labels)
    return digit_data("mnist", str(data_dir.resolve()), arrays["train"], arrays["t10k"])


def _find_idx(data_dir: Path, stem: str) -> Path | None:
    for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
        if candidate.is_file():
            return candidate
    return None


def _require_idx(data_dir: Path, stem: str) -> Path:
    path = _find_idx(data_dir, stem)
    if path is None:
        raise DataError(f"{stem}(.gz) not found in {data_dir}")
    return path


def _verified_bytes(path: Path) -> bytes:
    """The uncompressed content of an IDX file, checked against the official SHA-256."""
    try:
        content = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path.name}: cannot be decompressed ({error})") from error
    stem = path.name.removesuffix(".gz")
    _check_digest(path.name, stem, content)
    return content


def _check_digest(filename: str, stem: str, content: bytes) -> None:
    expected = MNIST_SHA256[stem]
    actual = hashlib.sha256(content).hexdigest()
    if actual != expected:
        raise DataError(
            f"{filename}: SHA-256 {actual[:12]}… does not match the official MNIST content "
            f"({expected[:12]}…); the file is corrupted or not MNIST"
        )


def parse_idx_images(path: Path, content: bytes) -> np.ndarray:
    """Parse an IDX3 unsigned-byte image file into a (n, rows, cols) uint8 array."""
    if len(content) < 16:
        raise DataError(f"{path.name}: truncated IDX header ({len(content)} bytes)")
    magic, count, rows, cols = struct.unpack(">IIII", content[:16])
    if magic != _IDX_IMAGES_MAGIC:
        raise DataError(
            f"{path.name}: magic number {magic:#010x}, expected {_IDX_IMAGES_MAGIC:#010x}"
        )
    if (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{path.name}: images are {rows}x{cols}, expected 28x28")
    _check_payload(path, content, 16, count * rows * cols)
    return np.frombuffer(content, np.uint8, offset=16).reshape(count, rows, cols)


def parse_idx_labels(path: Path, content: bytes) -> np.ndarray:
    """Parse an IDX1 unsigned-byte label file into a (n,) uint8 array of digits 0-9."""
    if len(content) < 8:
        raise DataError(f"{path.name}: truncated IDX header ({len(content)} bytes)")
    magic, count = struct.unpack(">II", content[:8])
    if magic != _IDX_LABELS_MAGIC:
        raise DataError(
            f"{path.name}: magic number {magic:#010x}, expected {_IDX_LABELS_MAGIC:#010x}"
        )
    _check_payload(path, content, 8, count)
    labels = np.frombuffer(content, np.uint8, offset=8)
    if labels.max(initial=0) >= NUM_CLASSES:
        raise DataError(f"{path.name}: label {labels.max()} is not a digit")
    return labels


def _check_payload(path: Path, content: bytes, header_size: int, expected: int) -> None:
    actual = len(content) - header_size
    if actual != expected:
        raise DataError(f"{path.name}: header promises {expected} data bytes, file holds {actual}")


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array as IDX, so npz content can be checked against the IDX digests."""
    magic = _IDX_IMAGES_MAGIC if array.ndim == 3 else _IDX_LABELS_MAGIC
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def load_mnist_npz(path: Path) -> DigitData:
    """MNIST from a Keras-style `mnist.npz`, verified against the official IDX content."""
    try:
        with np.load(path) as npz:
            arrays = {key: npz[key] for key in KERAS_NPZ_STEMS}
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{path.name}: not a readable Keras mnist.npz ({error})") from error
    for key, stem in KERAS_NPZ_STEMS.items():
        _check_digest(f"{path.name}[{key}]", stem, idx_bytes(arrays[key]))
    train, test = (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
    return digit_data("mnist", str(path.resolve()), train, test)


def load_mnist_keras(cached: Path) -> DigitData:
    """MNIST from Keras' cache, `cached` (~/.keras/datasets/mnist.npz), downloaded there through
    Keras first where there is none.

    Read by digitml, its content checked against the official digests, not by
    `keras.datasets.mnist.load_data()`: that checks the file's bytes against Google's, downloads
    again on a mismatch and deletes the file when offline, so an mnist.npz made from the genuine
    IDX files (a mirror's, an offline machine's) would be thrown away."""
    if not cached.is_file():
        download_keras_mnist(cached)
    try:
        return load_mnist_npz(cached)
    except DataError as error:
        raise DataError(f"{error}; delete {cached} to download it again") from error


def download_keras_mnist(
    target: Path, origin: str = KERAS_MNIST_ORIGIN, sha256: str = KERAS_MNIST_SHA256
) -> None:
    """Keras' download of mnist.npz (its bytes checked against `sha256`) into a folder of its own
    beside `target`, then renamed to it: processes that download at once (two trainings, parallel
    tests) never read half a file, and the last one's whole file stays."""
    import keras

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".mnist-download-") as scratch:
        try:
            downloaded = keras.utils.get_file(
                "mnist.npz",
                origin,
                file_hash=sha256,
                cache_dir=scratch,
                cache_subdir="",
            )
        except Exception as error:  # network or file failures surface as many types
            raise DataError(
                f"could not download MNIST through Keras ({error}); pass --data-dir or set "
                "DIGITML_DATA_DIR to a folder with the IDX files, or use --dataset digits"
            ) from error
        os.replace(downloaded, target)


def load_digits() -> DigitData:
    """scikit-learn's bundled 8x8 digits, upscaled to MNIST style: 20x20 ink box centred in 28x28."""
    from PIL import Image
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    small = (bunch.images / 16.0 * 255).astype(np.uint8)
    upscaled = np.zeros((len(small), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for index, image in enumerate(small):
        big = Image.fromarray(image).resize((20, 20), Image.Resampling.BILINEAR)
        upscaled[index, 4:24, 4:24] = np.asarray(big)
    train_x, test_x, train_y, test_y = train_test_split(
        upscaled,
        bunch.target,
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=bunch.target,
    )
    return digit_data(
        "digits", "sklearn.datasets.load_digits", (train_x, train_y), (test_x, test_y)
    )


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) -> float32 (n, 28, 28, 1) in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[..., np.newaxis]


def as_pixels(images: np.ndarray) -> np.ndarray:
    """float32 (n, 28, 28, 1) in [0, 1] -> uint8 (n, 28, 28): `to_model_input` undone."""
    return np.round(images[..., 0] * 255).astype(np.uint8)


def keras_arrays(data: DigitData) -> dict[str, np.ndarray]:
    """The data as Keras' mnist.npz holds it (uint8 x_train, y_train, x_test, y_test): saved with
    np.savez into Keras' cache, what digitml reads without downloading (an offline machine's)."""
    return {
        "x_train": as_pixels(data.train_images),
        "y_train": data.train_labels.astype(np.uint8),
        "x_test": as_pixels(data.test_images),
        "y_test": data.test_labels.astype(np.uint8),
    }


def balanced_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of `size` examples, shuffled by `seed`, with the classes taking turns."""
    order = np.random.default_rng(seed).permutation(len(labels))
    shuffled_labels = labels[order]
    rank_in_class = np.zeros(len(order), np.int64)
    for digit in np.unique(labels):
        members = shuffled_labels == digit
        rank_in_class[members] = np.arange(members.sum())
    return order[np.argsort(rank_in_class, kind="stable")[:size]]


def make_splits(
    data: DigitData, val_fraction: float, seed: int, limit: int | None = None
) -> Splits:
    """Seeded, stratified train/validation split of the (optionally limited) training set. The
    validation set holds at least one image of each digit (a small fraction of a small `limit`
    would hold fewer, which a stratified split refuses)."""
    from sklearn.model_selection import train_test_split

    images, labels = data.train_images, data.train_labels
    if limit is not None and limit < len(labels):
        chosen = balanced_subset(labels, limit, seed)
        images, labels = images[chosen], labels[chosen]
    val_size = max(math.ceil(val_fraction * len(labels)), NUM_CLASSES)
    train_x, val_x, train_y, val_y = train_test_split(
        images, labels, test_size=val_size, random_state=seed, stratify=labels
    )
    return Splits(data, train_x, train_y, val_x, val_y)


def content_digest(*arrays: np.ndarray) -> str:
    """SHA-256 over every byte of the arrays (MLflow's default digest samples only the start)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]
