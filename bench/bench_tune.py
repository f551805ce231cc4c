"""Hyperparameter-search benchmark on full MNIST: trials, best val accuracy, test accuracy, time.

    DIGITML_DATA_DIR=../shared/data/mnist python bench/bench_tune.py [--config tune]

Runs a real `digitml tune` in a throw-away MLflow store and tuning folder and prints a markdown
table. Target: >= 10 trials, best val_accuracy >= 99.5 % within 30 minutes of search.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tune")
    args = parser.parse_args()
    if not os.environ.get("DIGITML_DATA_DIR"):
        sys.exit("set DIGITML_DATA_DIR to the folder with the MNIST IDX files")
    # The runs work in a temporary folder: a relative path would not be found from there.
    os.environ["DIGITML_DATA_DIR"] = str(Path(os.environ["DIGITML_DATA_DIR"]).resolve())
    with tempfile.TemporaryDirectory() as work_dir:
        uri = f"sqlite:///{work_dir}/mlflow.db"
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "digitml.cli",
                "tune",
                "--config",
                args.config,
                "--experiment",
                "bench-tune",
            ],
            cwd=work_dir,
            env={**os.environ, "MLFLOW_TRACKING_URI": uri},
            check=False,
            stdout=subprocess.PIPE,
            text=True,
        )
        total_seconds = time.monotonic() - started
        if result.returncode != 0:
            sys.exit(f"tune failed (exit {result.returncode})")
        print("\n".join(line for line in result.stdout.splitlines() if line.startswith("trial ")))
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.get_experiment_by_name("bench-tune")
        runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
        kinds = {}
        for run in runs:
            kinds.setdefault(run.data.tags.get("digitml.kind"), []).append(run)
        (parent,) = kinds["tune"]
        (best,) = kinds["best"]
        trials = kinds["trial"]
        search_seconds = (best.info.start_time - parent.info.start_time) / 1000
        print()
        print(
            "| trials | failed | best val_accuracy | registered model test_accuracy | search wall time | "
            "best retrain (train_seconds) | total wall time |"
        )
        print("|---|---|---|---|---|---|---|")
        print(
            f"| {len(trials)} | {sum(run.info.status == 'FAILED' for run in trials)} "
            f"| {parent.data.metrics['best_val_accuracy']:.2%} | {best.data.metrics['test_accuracy']:.2%} "
            f"| {search_seconds / 60:.1f} min | {best.data.metrics['train_seconds'] / 60:.1f} min "
            f"| {total_seconds / 60:.1f} min |"
        )
        print(
            "\nbest hyperparameters: "
            + ", ".join(
                f"{key[5:]}={value}"
                for key, value in sorted(parent.data.params.items())
                if key.startswith("best_")
            )
        )


if __name__ == "__main__":
    main()
