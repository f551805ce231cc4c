"""REST serving benchmark: our pyfunc vs the bare Keras model, both under `mlflow models serve`.

    DIGITML_DATA_DIR=../shared/data/mnist python bench/bench_serving.py [--run-id RUN_ID]

Without --run-id, trains the fast recipe on 20,000 images in a throw-away store first. Prints a
markdown table: one-image latency p50/p99 (sequential requests) and images/s for batches of 256.
Targets: p50 <= 15 ms, p99 <= 50 ms, >= 2,000 images/s, our wrapper <= 1.5x the bare model's time.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from serving import ModelServer  # noqa: E402

SINGLE_REQUESTS = 300
BATCH = 256
BATCH_REQUESTS = 20


def timed(server: ModelServer, body: str, count: int) -> list[float]:
    """Seconds per request, after two warm-up requests."""
    for _ in range(2):
        status, text = server.post(body)
        if status != 200:
            sys.exit(f"request failed: {status} {text[:500]}")
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        server.post(body)
        seconds.append(time.perf_counter() - started)
    return seconds


def bodies(images: np.ndarray) -> dict[str, tuple[str, str]]:
    """(single-image body, 256-image body) per way of sending the digits."""

    def png(image: np.ndarray) -> str:
        buffer = io.BytesIO()
        Image.fromarray(255 - image).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    def pixels(batch: np.ndarray) -> str:
        return json.dumps({"dataframe_records": [{"pixels": image.tolist()} for image in batch]})

    def files(batch: np.ndarray) -> str:
        return json.dumps({"dataframe_records": [{"image": png(image)} for image in batch]})

    def tensor(batch: np.ndarray) -> str:
        return json.dumps({"inputs": (batch[..., np.newaxis] / 255.0).round(4).tolist()})

    return {
        "digitml pyfunc, pixels": (pixels(images[:1]), pixels(images[:BATCH])),
        "digitml pyfunc, PNG files": (files(images[:1]), files(images[:BATCH])),
        "bare Keras model, tensor": (tensor(images[:1]), tensor(images[:BATCH])),
    }


def train_reference_model(store: str) -> str:
    from digitml.config import load_config
    from digitml.experiment import run_training

    os.chdir(store)
    config = load_config("fast", {"limit": 20_000, "data_dir": os.environ["DIGITML_DATA_DIR"]})
    return run_training(config, checkpoint_root=Path(store) / "checkpoints", progress="none").run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", help="a finished digitml training run in MLFLOW_TRACKING_URI")
    args = parser.parse_args()
    from digitml.data import load_mnist_dir

    # The model is trained in a temporary folder: a relative path would not be found from there.
    os.environ["DIGITML_DATA_DIR"] = str(Path(os.environ["DIGITML_DATA_DIR"]).resolve())

    images = np.round(
        load_mnist_dir(Path(os.environ["DIGITML_DATA_DIR"])).test_images[:BATCH, ..., 0] * 255
    )
    images = images.astype(np.uint8)
    with tempfile.TemporaryDirectory() as store:
        if args.run_id:
            run_id = args.run_id
        else:
            mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
            run_id = train_reference_model(store)
        paths = {
            "digitml": mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model"),
            "bare": mlflow.artifacts.download_artifacts(f"runs:/{run_id}/keras_model"),
        }
        print(
            "| model, input | p50 one image (ms) | p99 one image (ms) | images/s, batches of 256 |"
        )
        print("|---|---|---|---|")
        for label, (single, batch) in bodies(images).items():
            server = ModelServer(paths["bare" if label.startswith("bare") else "digitml"])
            try:
                latencies = sorted(timed(server, single, SINGLE_REQUESTS))
                batch_seconds = timed(server, batch, BATCH_REQUESTS)
            finally:
                server.stop()
            p50 = statistics.median(latencies) * 1000
            p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1000
            throughput = BATCH * len(batch_seconds) / sum(batch_seconds)
            print(f"| {label} | {p50:.1f} | {p99:.1f} | {throughput:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
