"""REST serving benchmark with what users send, through a real `mlflow models serve`.

    DIGITML_DATA_DIR=../shared/data/mnist python bench/bench_serving.py [--model-uri URI]
        [--workers 1] [--load-seconds 60]

Without --model-uri, trains the fast recipe on 20,000 images in a throw-away store first; give
the default recipe's model (`runs:/RUN_ID/model`, `models:/digit-classifier@champion`) for the
figures of docs/serving.md. Images are made here from MNIST test digits (tests/drawings.py): 28x28
PNGs, 1050x800 canvas PNGs, 3000x4000 phone-photo JPEGs and 64x64 RGBA icons.

Prints the model's own latency in-process (one 28x28 PNG per `predict`, no server), then one
markdown table: per kind, p50/p99 of one-image requests (sequential) and images/s in
batches of 64; a batch of 200 canvas PNGs; 8 clients sending one canvas PNG per request for
--load-seconds; 28x28 `pixels` in batches of 256 beside the model's own in-process rate.
Run it alone on the machine: anything else running changes every figure.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from drawings import canvas_png, icon_png, mnist_png, photo_jpeg  # noqa: E402
from serving import ModelServer  # noqa: E402

KINDS: dict[str, tuple[Callable[[np.ndarray], bytes], int]] = {
    # kind: (maker, one-image requests timed)
    "28x28 PNG": (mnist_png, 200),
    "1050x800 canvas PNG": (canvas_png, 100),
    "3000x4000 photo JPEG": (photo_jpeg, 40),
    "64x64 RGBA icon": (icon_png, 200),
}
BATCH = 64
BATCH_REQUESTS = 5
BIG_BATCH = 200
PIXELS_BATCH = 256
PIXELS_REQUESTS = 20
CLIENTS = 8
IN_PROCESS_CALLS = 512


def image_records(files: list[bytes]) -> str:
    rows = [{"image": base64.b64encode(data).decode()} for data in files]
    return json.dumps({"dataframe_records": rows})


def pixels_records(images: np.ndarray, packed: bool) -> str:
    """`pixels` rows: 28x28 JSON numbers, or (packed) base64 text of the 784 bytes."""
    rows = [
        {"pixels": base64.b64encode(image.tobytes()).decode() if packed else image.tolist()}
        for image in images
    ]
    return json.dumps({"dataframe_records": rows})


def post_ok(server: ModelServer, body: str) -> float:
    """Seconds the request took; exits on anything but HTTP 200."""
    started = time.perf_counter()
    status, text = server.post(body)
    if status != 200:
        sys.exit(f"request failed: {status} {text[:500]}")
    return time.perf_counter() - started


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    ordered = sorted(seconds)
    return statistics.median(ordered) * 1000, ordered[int(0.99 * (len(ordered) - 1))] * 1000


def one_image_latencies(server: ModelServer, bodies: list[str], count: int) -> list[float]:
    for body in bodies[:2]:  # warm-up
        post_ok(server, body)
    return [post_ok(server, bodies[index % len(bodies)]) for index in range(count)]


def batch_rate(server: ModelServer, body: str, size: int, requests: int) -> float:
    post_ok(server, body)
    return size * requests / sum(post_ok(server, body) for _ in range(requests))


def load(server: ModelServer, bodies: list[str], seconds: float) -> tuple[int, int, list[float]]:
    """CLIENTS threads posting one-image bodies back to back: (requests, errors, latencies)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(offset: int) -> None:
        index = offset
        while time.monotonic() < deadline:
            started = time.perf_counter()
            status, _ = server.post(bodies[index % len(bodies)])
            took = time.perf_counter() - started
            with lock:
                latencies.append(took)
                errors[0] += status != 200
            index += CLIENTS

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies), errors[0], latencies


def in_process_rate(model: mlflow.pyfunc.PyFuncModel, images: np.ndarray) -> float:
    """Images/s of the served model's own Keras network on 28x28 batches (`predict_on_batch`)."""
    network = model.unwrap_python_model().model
    batch = images[:PIXELS_BATCH, ..., np.newaxis].astype(np.float32) / 255
    network.predict_on_batch(batch)
    started = time.perf_counter()
    for _ in range(PIXELS_REQUESTS):
        network.predict_on_batch(batch)
    return PIXELS_BATCH * PIXELS_REQUESTS / (time.perf_counter() - started)


def in_process_latencies(model: mlflow.pyfunc.PyFuncModel, files: list[bytes]) -> list[float]:
    """Seconds of the served model's own `predict` (the pyfunc, no server) on one 28x28 PNG each
    call: what the model costs per image before MLflow's server adds its share."""
    model.predict(pd.DataFrame({"image": files[:1]}))
    latencies = []
    for data in files * (IN_PROCESS_CALLS // len(files)):
        started = time.perf_counter()
        model.predict(pd.DataFrame({"image": [data]}))
        latencies.append(time.perf_counter() - started)
    return latencies


def train_reference_model(store: str) -> str:
    from digitml.config import load_config
    from digitml.training_run import run_training

    os.chdir(store)
    config = load_config("fast", {"limit": 20_000, "data_dir": os.environ["DIGITML_DATA_DIR"]})
    run = run_training(config, checkpoint_root=Path(store) / "checkpoints", progress="none")
    return f"runs:/{run.run_id}/model"


def row(label: str, *cells: str) -> None:
    print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", help="the pyfunc model to serve (runs:/…/model, models:/…)")
    parser.add_argument("--workers", type=int, default=1, help="mlflow models serve --workers")
    parser.add_argument("--load-seconds", type=float, default=60.0)
    args = parser.parse_args()
    from digitml.data import load_mnist_dir

    # The model may be trained in a temporary folder: a relative path would not be found there.
    os.environ["DIGITML_DATA_DIR"] = str(Path(os.environ["DIGITML_DATA_DIR"]).resolve())
    data = load_mnist_dir(Path(os.environ["DIGITML_DATA_DIR"]))
    digits = np.round(data.test_images[:PIXELS_BATCH, ..., 0] * 255).astype(np.uint8)

    with tempfile.TemporaryDirectory() as store:
        model_uri = args.model_uri
        if model_uri is None:
            mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
            model_uri = train_reference_model(store)
        path = mlflow.artifacts.download_artifacts(model_uri)
        model = mlflow.pyfunc.load_model(path)
        keras_rate = in_process_rate(model, digits)
        p50, p99 = percentiles(
            in_process_latencies(model, [mnist_png(digit) for digit in digits[:BATCH]])
        )
        server = ModelServer(path, workers=args.workers)
        try:
            print(f"model {model_uri}, {args.workers} worker(s)")
            print(f"in-process, one 28x28 PNG per predict: p50 {p50:.1f} ms, p99 {p99:.1f} ms\n")
            row(
                "input", "p50 one image (ms)", "p99 one image (ms)", f"images/s, batches of {BATCH}"
            )
            row("---", "---", "---", "---")
            files_of = {
                make: [make(digit) for digit in digits[:BATCH]] for make, _ in KINDS.values()
            }
            for kind, (make, count) in KINDS.items():
                files = files_of[make]
                p50, p99 = percentiles(
                    one_image_latencies(server, [image_records([f]) for f in files], count)
                )
                rate = batch_rate(server, image_records(files), BATCH, BATCH_REQUESTS)
                row(kind, f"{p50:.1f}", f"{p99:.1f}", f"{rate:,.0f}")
            canvases = files_of[canvas_png]
            big = canvases * (BIG_BATCH // BATCH) + canvases[: BIG_BATCH % BATCH]
            seconds = post_ok(server, image_records(big))
            print(f"\n{BIG_BATCH} canvas PNGs in one request: HTTP 200 in {seconds:.2f} s")
            requests, errors, latencies = load(
                server, [image_records([f]) for f in canvases], args.load_seconds
            )
            p50, p99 = percentiles(latencies)
            print(
                f"{CLIENTS} clients x {args.load_seconds:.0f} s, canvas PNGs: "
                f"{requests / args.load_seconds:.1f} requests/s, p50 {p50:.0f} ms, "
                f"p99 {p99:.0f} ms, {errors} errors"
            )
            print(
                f"the Keras model in-process, batches of {PIXELS_BATCH}: {keras_rate:,.0f} images/s"
            )
            for packed, form in ((False, "JSON numbers"), (True, "base64 bytes")):
                body = pixels_records(digits, packed)
                rate = batch_rate(server, body, PIXELS_BATCH, PIXELS_REQUESTS)
                print(
                    f"28x28 pixels as {form}, batches of {PIXELS_BATCH}: {rate:,.0f} images/s "
                    f"over REST ({rate / keras_rate:.0%} of the model in-process)"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
