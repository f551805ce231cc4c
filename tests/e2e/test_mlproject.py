"""`mlflow run .` through the MLproject (its main entry point, and `-e tune`), on a tiny slice,
in a real MLflow store."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.projects._project_spec import load_project

from conftest import REPO_ROOT, all_runs, require_mnist


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project as `mlflow run` reads it (MLproject, conda.yaml, the package, the
    recipes): the run's commands work in the project folder, which must not be the checkout."""
    copy = tmp_path_factory.mktemp("project")
    for name in ("MLproject", "conda.yaml"):
        shutil.copy(REPO_ROOT / name, copy)
    for name in ("digitml", "experiments"):
        shutil.copytree(REPO_ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def mlflow_run(
    project: Path,
    *params: str,
    cwd: Path,
    experiment: str | None = "mlproject-test",
    entry_point: str | None = None,
) -> subprocess.CompletedProcess:
    venv_bin = str(Path(sys.executable).parent)
    command = [
        shutil.which("mlflow", path=venv_bin) or "mlflow",
        "run",
        str(project),
        "--env-manager",
        "local",
    ]
    if entry_point:
        command += ["-e", entry_point]
    if experiment:
        command += ["--experiment-name", experiment]
    for param in params:
        command += ["-P", param]
    env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_mlflow_run_trains_a_slice_of_mnist_in_the_run_mlflow_made(project, tracking_uri, tmp_path):
    """No -e: the main entry point. Without --experiment-name, MLflow's launcher run is in Default
    and ours is its child."""
    result = mlflow_run(
        project,
        "config=fast",
        "limit=300",
        "epochs=1",
        f"data_dir={require_mnist()}",
        cwd=tmp_path,
        experiment=None,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = all_runs("Default")
    assert len(runs) == 2
    launcher, run = sorted(runs, key=lambda run: "mlflow.parentRunId" in run.data.tags)
    assert run.data.tags["mlflow.parentRunId"] == launcher.info.run_id
    assert launcher.info.status == run.info.status == "FINISHED"
    assert run.data.params["train_size"] == "270"
    assert run.data.params["model"] == "small"  # from fast.yaml: '' params keep the config's values
    assert "test_accuracy" in run.data.metrics


def test_mlflow_run_without_an_entry_point_is_the_training():
    """`mlflow run .` runs `main`, read here by MLflow's own loader: train's parameters and command."""
    project = load_project(str(REPO_ROOT))
    main, train = project.get_entry_point("main"), project.get_entry_point("train")
    assert main.command == train.command
    assert {name: vars(param) for name, param in main.parameters.items()} == {
        name: vars(param) for name, param in train.parameters.items()
    }


def test_mlflow_run_rejects_a_bad_int_parameter(project, tracking_uri, tmp_path):
    result = mlflow_run(project, "epochs=-2", "dataset=digits", cwd=tmp_path)
    assert result.returncode != 0
    assert "--epochs" in result.stderr


def test_mlflow_run_tune_runs_a_tiny_search(project, tracking_uri, tmp_path):
    search = tmp_path / "search.yaml"
    search.write_text(
        "base_config: fast\ntuner: random\nmax_trials: 2\nepochs: 1\nbest_epochs: 1\n"
        "search_space:\n  model_params.dense_units: {type: int, min: 16, max: 64, step: 16}\n"
    )
    result = mlflow_run(
        project,
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
