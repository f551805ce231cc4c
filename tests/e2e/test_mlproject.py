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
    env: dict[str, str] | None = None,
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
    path = venv_bin + os.pathsep + os.environ.get("PATH", "")
    return subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, "PATH": path, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_mlflow_run_trains_in_the_recipes_experiment_and_writes_nothing_into_the_project(
    project, tracking_uri, tmp_path
):
    """No -e: the main entry point. Without --experiment-name, MLflow puts its own (launcher) run
    in Default; ours goes to the recipe's experiment, and the launcher is named after it. The
    working files go to the user's cache folder, and none is left there."""
    before = sorted(path.relative_to(project) for path in project.rglob("*"))
    cache = tmp_path / "cache"
    result = mlflow_run(
        project,
        "config=fast",
        "limit=300",
        "epochs=1",
        f"data_dir={require_mnist()}",
        cwd=tmp_path,
        experiment=None,
        env={"XDG_CACHE_HOME": str(cache), "DIGITML_WORK_DIR": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (launcher,) = all_runs("Default")
    (run,) = all_runs("digitml")
    assert f"MLflow run {run.info.run_id} (fast-small-s42) in experiment 'digitml'" in result.stdout
    assert run.info.run_name == "fast-small-s42" and "mlflow.parentRunId" not in run.data.tags
    assert run.data.params["experiment"] == "digitml"
    assert launcher.info.run_name == "mlflow run → fast-small-s42"
    assert launcher.data.tags["digitml.run_id"] == run.info.run_id
    assert launcher.info.status == run.info.status == "FINISHED"
    assert run.data.params["train_size"] == "270"
    assert run.data.params["model"] == "small"  # from fast.yaml: '' params keep the config's values
    assert "test_accuracy" in run.data.metrics
    # Working files stay out of the project. (Artifacts of an experiment digitml creates here
    # still go to ./mlruns, which MLflow resolves against the project folder `mlflow run` uses.)
    after = {path.relative_to(project) for path in project.rglob("*")} - set(before)
    assert {path.parts[0] for path in after} <= {"mlruns"}
    assert (cache / "digitml").is_dir()  # the work folder was used, and left with no file
    assert [path for path in (cache / "digitml").rglob("*") if path.is_file()] == []


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
    runs = {
        run.data.tags.get("digitml.kind", "launcher"): run for run in all_runs("mlproject-test")
    }
    search_run, launcher = runs["tune"], runs["launcher"]
    assert "mlflow.parentRunId" not in search_run.data.tags  # two levels: search, trials
    assert launcher.data.tags["digitml.run_id"] == search_run.info.run_id
    assert search_run.info.run_name == "tune-search" and runs["best"].info.run_name in {
        "best-trial-01",
        "best-trial-02",
    }
    trial_names = sorted(run.info.run_name for run in all_runs("mlproject-test"))
    assert {"trial-01", "trial-02"} <= set(trial_names)
    assert "limit" not in search_run.data.params  # unset: no 'None' param
