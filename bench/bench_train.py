"""Training benchmark on full MNIST: wall time of the fit and test accuracy per recipe.

    DIGITML_DATA_DIR=../shared/data/mnist python bench/bench_train.py [--repeats-fast 3] [CONFIG ...]

Each run is a real `digitml train` process logging into a throw-away MLflow store; the table
(markdown) reports the median over repeats. Targets: fast >= 99.0 % in <= 8 s, default >= 99.6 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_CONFIGS = ["fast", "baseline", "default"]


def train_once(config: str, store_dir: str, seed: int) -> tuple[float, float]:
    """(train_seconds, test_accuracy) of one `digitml train --config CONFIG` run."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store_dir}/mlflow.db"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "digitml.cli",
            "train",
            "--config",
            config,
            "--seed",
            str(seed),
            "--experiment",
            "bench",
        ],
        cwd=store_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"{config} failed:\n{result.stderr[-2000:]}")
    values = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    return float(values["train_seconds"]), float(values["test_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=DEFAULT_CONFIGS)
    parser.add_argument("--repeats-fast", type=int, default=3)
    args = parser.parse_args()
    if not os.environ.get("DIGITML_DATA_DIR"):
        sys.exit("set DIGITML_DATA_DIR to the folder with the MNIST IDX files")
    # The runs work in a temporary folder: a relative path would not be found from there.
    os.environ["DIGITML_DATA_DIR"] = str(Path(os.environ["DIGITML_DATA_DIR"]).resolve())
    print(
        "| config | runs | train seconds (median) | test accuracy (median) | all runs (s / acc) |"
    )
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as store_dir:
        for config in args.configs:
            repeats = args.repeats_fast if config == "fast" else 1
            results = [train_once(config, store_dir, seed) for seed in (42, 1, 2)[:repeats]]
            seconds = statistics.median(s for s, _ in results)
            accuracy = statistics.median(a for _, a in results)
            detail = ", ".join(f"{s:.1f} / {a:.2%}" for s, a in results)
            print(
                f"| {config} | {repeats} | {seconds:.1f} | {accuracy:.2%} | {detail} |", flush=True
            )


if __name__ == "__main__":
    main()
