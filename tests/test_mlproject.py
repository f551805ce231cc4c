"""`mlflow run . -e train` through the MLproject, on a tiny slice, in a real MLflow store."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, all_runs, require_mnist


def mlflow_run(
    *params: str,
    cwd: Path,
    experiment: str | None = "mlproject-test",
    entry_point: str = "train",
) -> subprocess.CompletedProcess:
    venv_bin = str(Path(sys.executable).parent)
    command = [
        shutil.which("mlflow", path=venv_bin) or "mlflow",
        "run",
        str(REPO_ROOT),
        "-e",
        entry_point,
        "--env-manager",
        "local",
    ]
    if experiment:
        command += ["--experiment-name", experiment]
    for param in params:
        command += ["-P", param]
    env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_mlflow_run_trains_on_a_slice_of_mnist(tracking_uri, tmp_path):
    data_dir = require_mnist()
    result = mlflow_run(
        "config=fast",
        "limit=300",
        "epochs=1",
        f"data_dir={data_dir}",
        "experiment=mlproject-test",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    launcher, run = sorted(
        all_runs("mlproject-test"), key=lambda run: "mlflow.parentRunId" in run.data.tags
    )
    assert run.data.tags["mlflow.parentRunId"] == launcher.info.run_id
    assert launcher.info.status == run.info.status == "FINISHED"
    assert run.data.params["train_size"] == "270"
    assert run.data.params["model"] == "small"  # from fast.yaml: '' params keep the config's values
    assert "test_accuracy" in run.data.metrics


def test_mlflow_run_without_experiment_name_uses_the_run_mlflow_made(tracking_uri, tmp_path):
    result = mlflow_run("config=fast", "dataset=digits", "epochs=1", cwd=tmp_path, experiment=None)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = all_runs("Default")
    assert len(runs) == 2 and all(run.info.status == "FINISHED" for run in runs)
    assert any("test_accuracy" in run.data.metrics for run in runs)


def test_mlflow_run_rejects_a_bad_int_parameter(tracking_uri, tmp_path):
    result = mlflow_run("epochs=-2", "dataset=digits", cwd=tmp_path)
    assert result.returncode != 0
    assert "--epochs" in result.stderr


def test_mlflow_run_tune_runs_a_tiny_search(tracking_uri, tmp_path):
    search = tmp_path / "search.yaml"
    search.write_text(
        "base_config: fast\ntuner: random\nmax_trials: 2\nepochs: 1\nbest_epochs: 1\n"
        "search_space:\n  dense_units: {type: int, min: 16, max: 64, step: 16}\n"
    )
    result = mlflow_run(
        f"config={search}",
        f"tuning_dir={tmp_path / 'tuning'}",
        "dataset=digits",
        "experiment=mlproject-test",
        cwd=tmp_path,
        entry_point="tune",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    kinds = sorted(
        run.data.tags.get("digitml.kind", "launcher") for run in all_runs("mlproject-test")
    )
    assert kinds == ["best", "launcher", "trial", "trial", "tune"]
