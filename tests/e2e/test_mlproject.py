"""`mlflow run` through the MLproject, its entry points as a user types them (on a tiny slice),
from a folder that is not the project, in a real MLflow store. The main entry point (which
`train` is, as MLflow reads the file) and `-e tune` (the shipped search) run as the docs show
them, in test_docs.py; the recipe `main` runs by default, `default`, runs in test_shipped.py."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import yaml
from mlflow.projects._project_spec import load_project

from conftest import REPO_ROOT, all_runs, copy_project, invoke_cli, new_store, tracking_at


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project as `mlflow run` reads it: the run's commands work in the project
    folder, which must not be the checkout."""
    return copy_project(tmp_path_factory.mktemp("project"))


def mlflow_run(
    project: Path,
    *params: str,
    cwd: Path,
    experiment: str = "mlproject-test",
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
    command += ["--experiment-name", experiment]
    for param in params:
        command += ["-P", param]
    path = venv_bin + os.pathsep + os.environ.get("PATH", "")
    return subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def store(empty_store, tmp_path_factory):
    """One store, and the folder the module's `mlflow run`s start from."""
    folder = tmp_path_factory.mktemp("mlflow-run")
    with tracking_at(new_store(empty_store, folder), folder) as uri:
        yield SimpleNamespace(uri=uri, folder=folder)


MODELS_EXPERIMENT = "mlproject-models"


@pytest.fixture(scope="module")
def trained_on_digits(store) -> str:
    """A small `fast` training (one epoch on 300 digits), in this process: the id of the run
    whose model the evaluate and promote entry points take."""
    small = ("--dataset", "digits", "--limit", "300", "--epochs", "1")
    result = invoke_cli("train", "--config", "fast", *small, "--experiment", MODELS_EXPERIMENT)
    assert result.exit_code == 0, result.output[-3000:]
    (run,) = runs_of_kind("train")
    return run.info.run_id


def runs_of_kind(kind: str) -> list:
    return [run for run in all_runs(MODELS_EXPERIMENT) if run.data.tags.get("digitml.kind") == kind]


def test_every_entry_point_of_the_mlproject_runs_here():
    """A new entry point needs its run in this module (`main`'s, which is `train`, and `tune`'s
    are in test_docs.py)."""
    entry_points = yaml.safe_load((REPO_ROOT / "MLproject").read_text())["entry_points"]
    assert set(entry_points) == {"main", "train", "tune", "evaluate", "promote"}
    documents = (REPO_ROOT / "README.md").read_text() + (
        REPO_ROOT / "docs/configuration.md"
    ).read_text()
    assert "mlflow run . -e tune" in documents and "mlflow run . --env-manager local" in documents


def test_mlflow_run_evaluate_scores_the_model_on_the_data_it_was_trained_on(
    project, store, trained_on_digits
):
    """No dataset given: the model's own run's (digits), and the experiment --experiment-name names."""
    model_uri = f"runs:/{trained_on_digits}/model"
    result = mlflow_run(
        project,
        f"model_uri={model_uri}",
        cwd=store.folder,
        experiment=MODELS_EXPERIMENT,
        entry_point="evaluate",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (evaluation,) = runs_of_kind("evaluate")
    assert evaluation.data.params["model_uri"] == model_uri
    assert evaluation.data.params["dataset"] == "digits"
    assert f"evaluation run: {evaluation.info.run_id}" in result.stdout
    assert "test_accuracy" in evaluation.data.metrics


def test_mlflow_run_promote_makes_the_first_candidate_champion(project, store, trained_on_digits):
    result = mlflow_run(
        project,
        f"model_uri=runs:/{trained_on_digits}/model",
        "dataset=digits",
        cwd=store.folder,
        experiment=MODELS_EXPERIMENT,
        entry_point="promote",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    champion = mlflow.MlflowClient().get_model_version_by_alias("digit-classifier", "champion")
    assert champion.run_id == trained_on_digits


def test_mlflow_run_without_an_entry_point_is_the_training():
    """`mlflow run .` runs `main`, read here by MLflow's own loader: train's parameters and
    command, so the docs' `mlflow run .` (test_docs.py) runs `-e train` too."""
    project = load_project(str(REPO_ROOT))
    main, train = project.get_entry_point("main"), project.get_entry_point("train")
    assert main.command == train.command
    assert {name: vars(param) for name, param in main.parameters.items()} == {
        name: vars(param) for name, param in train.parameters.items()
    }


def test_mlflow_run_rejects_a_bad_int_parameter(project, tracking_uri, tmp_path):
    result = mlflow_run(project, "epochs=-2", "dataset=digits", cwd=tmp_path)
    assert result.returncode != 0
    assert "Invalid value for '--epochs': -2 is not in the range x>=1" in result.stderr
