"""Parity and speed of `digitml export`'s formats against Keras, on all 10,000 MNIST test images.

    DIGITML_DATA_DIR=../shared/data/mnist python bench/bench_export.py MODEL_URI [MODEL_URI ...]

MODEL_URI: a logged or registered digitml model (`runs:/RUN_ID/model`, `models:/NAME@ALIAS`),
read from the current tracking store (MLFLOW_TRACKING_URI); nothing is stored. Without
DIGITML_DATA_DIR, MNIST comes from Keras' cache. Per model and format, prints one markdown row:
export seconds, file size, the largest probability difference from Keras, how many of the 10,000
images get Keras' digit, and one image's and a batch of 256's time in the format's runtime (Keras:
`predict_on_batch`). Run it alone on the machine: anything else running changes the times.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPEATS = 100
CHUNK = 500


def median_ms(probabilities: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> float:
    probabilities(images)  # the first call allocates
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        probabilities(images)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def in_chunks(probabilities: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [probabilities(images[start : start + CHUNK]) for start in range(0, len(images), CHUNK)]
    )


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [item for item in path.rglob("*") if item.is_file()]
    return sum(item.stat().st_size for item in files) / 1e6


def row(*cells: str) -> None:
    print("| " + " | ".join(cells) + " |", flush=True)


def bench(model_uri: str, images: np.ndarray) -> None:
    import keras

    from digitml.export import (
        EXPORTS_DIR,
        FORMATS,
        at_inference,
        export_model,
    )

    with tempfile.TemporaryDirectory() as folder:
        results = export_model(model_uri, Path(folder), store=False)
        keras_file = next(Path(folder, "model").rglob("*.keras"))
        network = at_inference(keras.models.load_model(keras_file, compile=False))
        keras_answers = in_chunks(lambda batch: np.asarray(network.predict_on_batch(batch)), images)
        row(
            model_uri,
            "keras",
            "",
            f"{size_mb(keras_file):.1f}",
            "",
            "",
            f"{median_ms(network.predict_on_batch, images[:1]):.2f}",
            f"{median_ms(network.predict_on_batch, images[:256]):.1f}",
        )
        for result in results:
            form = FORMATS[result.format]
            path = Path(folder, EXPORTS_DIR, form.file)
            probabilities = form.runner(path)
            answers = in_chunks(probabilities, images)
            same = int((answers.argmax(1) == keras_answers.argmax(1)).sum())
            row(
                "",
                result.format,
                f"{result.seconds:.1f}",
                f"{size_mb(path):.1f}",
                f"{np.abs(answers - keras_answers).max():.1e}",
                f"{same:,} / {len(images):,}",
                f"{median_ms(probabilities, images[:1]):.2f}",
                f"{median_ms(probabilities, images[:256]):.1f}",
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_uris", nargs="+", metavar="MODEL_URI")
    args = parser.parse_args()
    from digitml import console
    from digitml.data import load_dataset

    console.load_tensorflow()
    images = load_dataset("mnist", os.environ.get("DIGITML_DATA_DIR")).test_images
    row(
        "model",
        "format",
        "export (s)",
        "size (MB)",
        "max |Δp| vs Keras",
        "Keras' digit",
        "1 image (ms)",
        "256 images (ms)",
    )
    row(*["---"] * 8)
    for model_uri in args.model_uris:
        bench(model_uri, images)


if __name__ == "__main__":
    main()
