import functools
import gzip
import hashlib
import shutil
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import require_mnist
from digitml.data import (
    DataError,
    balanced_subset,
    content_digest,
    download_keras_mnist,
    keras_arrays,
    load_dataset,
    load_digits,
    load_mnist_dir,
    load_mnist_npz,
    make_splits,
    parse_idx_images,
    parse_idx_labels,
)

FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_dir(require_mnist())


@pytest.fixture
def mnist_copy(tmp_path) -> Path:
    """A writable copy of the genuine gz files, to damage one at a time."""
    source = require_mnist()
    for name in FILES:
        shutil.copy(source / f"{name}.gz", tmp_path / f"{name}.gz")
    return tmp_path


def test_genuine_mnist_loads_with_official_shapes(mnist):
    assert mnist.train_images.shape == (60_000, 28, 28, 1)
    assert mnist.test_images.shape == (10_000, 28, 28, 1)
    assert mnist.train_images.dtype == np.float32
    assert 0.0 == mnist.train_images.min() and mnist.train_images.max() == 1.0
    assert np.bincount(mnist.test_labels).tolist()[:3] == [980, 1135, 1032]


def test_uncompressed_idx_files_load_too(mnist_copy, mnist):
    for name in FILES:
        path = mnist_copy / f"{name}.gz"
        (mnist_copy / name).write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    raw = load_mnist_dir(mnist_copy)
    assert np.array_equal(raw.test_labels, mnist.test_labels)


def test_mnist_without_a_folder_is_read_from_keras_cache_as_it_is(tmp_path, monkeypatch, mnist):
    """An mnist.npz made from the genuine files, whose bytes differ from Google's (Keras' loader
    would download again, or delete it offline), is read and checked by its content."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    np.savez(tmp_path / "datasets" / "mnist.npz", **keras_arrays(mnist))
    cached = load_dataset("mnist")
    assert np.array_equal(cached.test_labels, mnist.test_labels)
    assert cached.source == str(tmp_path / "datasets" / "mnist.npz")


def test_a_damaged_keras_cache_is_named_with_the_way_to_download_it_again(
    tmp_path, monkeypatch, mnist
):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    arrays = keras_arrays(mnist)
    arrays["y_train"] = np.roll(arrays["y_train"], 1)
    np.savez(tmp_path / "datasets" / "mnist.npz", **arrays)
    with pytest.raises(DataError) as refused:
        load_dataset("mnist")
    cached = tmp_path / "datasets" / "mnist.npz"
    assert str(refused.value).startswith("mnist.npz[y_train]: SHA-256")
    assert str(refused.value).endswith(f"delete {cached} to download it again")


def test_downloads_at_once_leave_one_whole_file(tmp_path, mnist):
    """Four downloads into one cache at the same time, from a real HTTP server on loopback."""
    served = tmp_path / "served"
    served.mkdir()
    np.savez(served / "mnist.npz", **keras_arrays(mnist))
    sha256 = hashlib.sha256((served / "mnist.npz").read_bytes()).hexdigest()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}/mnist.npz"
    target = tmp_path / "keras" / "datasets" / "mnist.npz"
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: download_keras_mnist(target, origin, sha256), range(4)))
    finally:
        server.shutdown()
    assert np.array_equal(load_mnist_npz(target).train_labels, mnist.train_labels)
    assert [path.name for path in target.parent.iterdir()] == ["mnist.npz"]


def test_keras_style_npz_is_verified_and_loads(tmp_path, mnist):
    arrays = keras_arrays(mnist)
    np.savez(tmp_path / "mnist.npz", **arrays)
    assert np.array_equal(load_mnist_dir(tmp_path).train_labels, mnist.train_labels)
    arrays["y_test"] = np.roll(arrays["y_test"], 1)
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(DataError, match=r"mnist.npz\[y_test\]"):
        load_mnist_dir(tmp_path)


def test_truncated_gzip_names_the_file(mnist_copy):
    path = mnist_copy / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_mnist_dir(mnist_copy)


def test_corrupted_pixel_fails_the_checksum(mnist_copy):
    path = mnist_copy / "t10k-images-idx3-ubyte.gz"
    content = bytearray(gzip.decompress(path.read_bytes()))
    content[5000] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: SHA-256"):
        load_mnist_dir(mnist_copy)


def test_swapped_files_fail_the_checksum(mnist_copy):
    shutil.copy(mnist_copy / "train-labels-idx1-ubyte.gz", mnist_copy / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_mnist_dir(mnist_copy)


def test_not_gzip_names_the_file(mnist_copy):
    (mnist_copy / "train-labels-idx1-ubyte.gz").write_bytes(b"definitely not gzip")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: cannot be decompressed"):
        load_mnist_dir(mnist_copy)


def test_missing_file_is_named(mnist_copy):
    (mnist_copy / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_mnist_dir(mnist_copy)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        load_dataset("mnist", tmp_path / "nowhere")


def _idx_images(
    count: int, rows: int = 28, cols: int = 28, magic: int = 0x803, extra: int = 0
) -> bytes:
    header = struct.pack(">IIII", magic, count, rows, cols)
    return header + bytes(count * rows * cols + extra)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x00\x08", "truncated IDX header"),
        (_idx_images(2, magic=0x801), "magic number"),
        (_idx_images(2, rows=32, cols=32), "32x32"),
        (_idx_images(2, extra=-100), "promises 1568 data bytes"),
        (_idx_images(2, extra=7), "promises 1568 data bytes"),
    ],
)
def test_idx_image_parser_rejects_malformed_content(content, message):
    with pytest.raises(DataError, match=message):
        parse_idx_images(Path("images.idx"), content)


def test_idx_label_parser_rejects_non_digit_labels():
    content = struct.pack(">II", 0x801, 3) + bytes([1, 2, 11])
    with pytest.raises(DataError, match="label 11"):
        parse_idx_labels(Path("labels.idx"), content)


def test_idx_parsers_read_valid_content():
    images = parse_idx_images(Path("i"), _idx_images(3))
    labels = parse_idx_labels(Path("l"), struct.pack(">II", 0x801, 3) + bytes([0, 9, 4]))
    assert images.shape == (3, 28, 28) and labels.tolist() == [0, 9, 4]


def test_digits_is_mnist_styled_and_offline():
    digits = load_digits()
    assert digits.train_images.shape[1:] == (28, 28, 1)
    assert len(digits.train_labels) + len(digits.test_labels) == 1797
    assert digits.train_images.max() == pytest.approx(1.0, abs=0.01)
    border = np.concatenate(
        [digits.train_images[:, :3].ravel(), digits.train_images[:, -3:].ravel()]
    )
    assert border.max() == 0.0  # black background, ink in the middle


def test_digits_test_set_does_not_depend_on_the_training_seed():
    """Training seeds Python's, NumPy's and the backend's global generators; the digits' fixed
    train/test split must not draw from them, or each seed would test on other images."""
    import keras

    test_sets = set()
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        digits = load_digits()
        test_sets.add(content_digest(digits.test_images, digits.test_labels))
    assert len(test_sets) == 1


def test_balanced_subset_takes_classes_in_turn():
    labels = np.repeat(np.arange(10), [50, 500, 60, 70, 80, 90, 100, 110, 120, 130])
    chosen = balanced_subset(labels, 100, seed=3)
    assert np.bincount(labels[chosen], minlength=10).tolist() == [10] * 10
    assert not np.array_equal(chosen, balanced_subset(labels, 100, seed=4))


def test_splits_are_seeded_shuffled_and_stratified():
    digits = load_digits()
    first = make_splits(digits, 0.1, seed=7)
    again = make_splits(digits, 0.1, seed=7)
    other = make_splits(digits, 0.1, seed=8)
    assert np.array_equal(first.val_labels, again.val_labels)
    assert not np.array_equal(first.val_labels, other.val_labels)
    assert len(first.val_labels) == pytest.approx(0.1 * len(digits.train_labels), abs=1)
    # Keras' validation_split would take the last rows: ours come from everywhere.
    tail = digits.train_images[-len(first.val_labels) :]
    assert not np.array_equal(first.val_images, tail)
    assert np.bincount(first.val_labels).min() >= 10


@pytest.mark.parametrize(
    "val_fraction, limit, val_size", [(0.02, 300, 10), (0.1, 20, 10), (0.1, 300, 30)]
)
def test_a_small_validation_share_still_holds_every_digit(val_fraction, limit, val_size):
    """The default recipe holds out 2 %: of `--limit 300`, 6 images, fewer than the ten digits a
    stratified split needs. The split takes one of each then; a larger share stays as asked."""
    splits = make_splits(load_digits(), val_fraction, seed=1, limit=limit)
    assert len(splits.val_labels) == val_size
    assert len(splits.train_labels) == limit - val_size
    assert set(splits.val_labels.tolist()) == set(range(10))


def test_limit_keeps_the_full_test_set(mnist):
    splits = make_splits(mnist, 0.1, seed=1, limit=500)
    assert len(splits.train_labels) + len(splits.val_labels) == 500
    assert len(splits.test_labels) == 10_000


def test_content_digest_covers_every_byte():
    images = np.zeros((20_000, 28, 28), np.uint8)
    changed = images.copy()
    changed[-1, -1, -1] = 1
    assert content_digest(images) != content_digest(changed)
