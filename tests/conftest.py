"""Shared fixtures: a real MLflow store in a temp dir, real data, one real training run."""

from __future__ import annotations

import os
import signal
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


@pytest.fixture(autouse=True)
def no_inherited_experiment(monkeypatch):
    """mlflow.set_experiment() exports MLFLOW_EXPERIMENT_ID; a test must not pass it on to the
    processes it starts (`mlflow run` refuses it beside --experiment-name)."""
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)


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


@pytest.fixture(scope="session")
def mnist_model(tmp_path_factory):
    """One real model trained on 20,000 MNIST images (fast recipe), logged in its own store.

    Yields (tracking_uri, run_id, local path of the pyfunc `model`).
    """
    from digitml.config import load_config
    from digitml.experiment import run_training

    store = tmp_path_factory.mktemp("model-store")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    previous_dir = os.getcwd()
    os.chdir(store)  # artifacts go to ./mlruns beside the database
    mlflow.set_tracking_uri(uri)
    try:
        config = load_config(
            "fast", {"limit": 20_000, "data_dir": str(require_mnist()), "experiment": "model"}
        )
        run_id = run_training(config, checkpoint_root=store / "checkpoints").run_id
        model_path = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)
        os.chdir(previous_dir)
    return uri, run_id, model_path


@pytest.fixture(scope="session")
def registered_model(mnist_model):
    """The session model registered as `digit-classifier`, alias `champion`; yields tracking URI."""
    uri, run_id, _ = mnist_model
    client = mlflow.MlflowClient(tracking_uri=uri)
    if not client.search_model_versions("name = 'digit-classifier'"):
        mlflow.set_tracking_uri(uri)
        try:
            version = mlflow.register_model(f"runs:/{run_id}/model", "digit-classifier").version
        finally:
            mlflow.set_tracking_uri(None)
        client.set_registered_model_alias("digit-classifier", "champion", version)
    return uri


def start_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `digitml ...` in the background; stdout and stderr are text pipes."""
    return subprocess.Popen(
        [sys.executable, "-m", "digitml.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_slow_training(cwd: Path, epochs: int, experiment: str) -> subprocess.Popen:
    """A training of a few seconds per epoch (the ResNet on digits), to interrupt on purpose."""
    return start_cli(
        "train",
        "--dataset",
        "digits",
        "--model",
        "resnet",
        "--epochs",
        str(epochs),
        "--experiment",
        experiment,
        cwd=cwd,
    )


def read_until(process: subprocess.Popen, prefix: str) -> list[str]:
    """The stdout lines up to and including the first that starts with `prefix`."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(
        f"the process ended before printing {prefix!r}: {process.stderr.read()[-2000:]}"
    )


def kill_at(process: subprocess.Popen, prefix: str, signum: int = signal.SIGKILL) -> list[str]:
    """Send `signum` once a stdout line starts with `prefix`; wait for the end; return the lines."""
    try:
        lines = read_until(process, prefix)
        process.send_signal(signum)
        process.wait(timeout=60)
    finally:
        process.kill()
    return lines
