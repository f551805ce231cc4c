"""Shared fixtures: a real MLflow store in a temp dir, real data, one real training run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Absolute, since tests change directory and pass the environment on to subprocesses.
MNIST_DIR = Path(
    os.environ.get("DIGITML_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "mnist")
).resolve()
os.environ["DIGITML_DATA_DIR"] = str(MNIST_DIR)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def require_mnist() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"genuine MNIST not found at {MNIST_DIR} (set DIGITML_DATA_DIR)")
    return MNIST_DIR


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A fresh SQLite tracking store (artifacts beside it) for one test, also seen by subprocesses."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300):
    """Run `digitml ...` as a user would, returning the CompletedProcess (never raising)."""
    return subprocess.run(
        [sys.executable, "-m", "digitml.cli", *args],
        check=False,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def all_runs(experiment: str = "digitml"):
    """Every run of an experiment in the current store (empty when the experiment does not exist)."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return []
    return mlflow.search_runs([found.experiment_id], output_format="list")
