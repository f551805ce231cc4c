"""`mlflow run .` through the MLproject, every entry point as a user types it (the shipped
recipes and search, on a tiny slice), in a real MLflow store; then that store as a practitioner
sees it in the MLflow UI (`mlflow server`, headless Chromium). With DIGITML_SCREENSHOT_DIR set, the
UI's pages are saved there (the pictures in docs/ are made so)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import yaml
from browser import CHROMEDRIVER, CHROMIUM, HOW_TO_GET, chromium
from mlflow.projects._project_spec import load_project
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from serving import free_port, stop_process, wait_for_http

from conftest import REPO_ROOT, all_runs, missing, new_store, require_mnist, tracking_at

MODEL_TRAINING = "workflowType=machine_learning"  # the MLflow UI's "Model training" view


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


@pytest.fixture(scope="module")
def store(empty_store, tmp_path_factory):
    """One store, and the folder the module's `mlflow run`s start from."""
    folder = tmp_path_factory.mktemp("mlflow-run")
    with tracking_at(new_store(empty_store, folder), folder) as uri:
        yield SimpleNamespace(uri=uri, folder=folder)


@pytest.fixture(scope="module")
def trained(project, store):
    """`mlflow run` without -e (the training), no --experiment-name, with no work folder set:
    (its result, the project's files before it, the user's cache folder it may use)."""
    before = sorted(path.relative_to(project) for path in project.rglob("*"))
    cache = store.folder / "cache"
    result = mlflow_run(
        project,
        "config=fast",
        "limit=300",
        "epochs=1",
        f"data_dir={require_mnist()}",
        cwd=store.folder,
        experiment=None,
        env={"XDG_CACHE_HOME": str(cache), "DIGITML_WORK_DIR": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return SimpleNamespace(result=result, before=before, cache=cache)


@pytest.fixture(scope="module")
def searched(project, store):
    """`mlflow run -e tune` of the shipped search, made small (two trials of one epoch on digits),
    in experiment mlproject-test."""
    result = mlflow_run(
        project,
        *("dataset=digits", "max_trials=2", "epochs=1", "best_epochs=1"),
        f"tuning_dir={store.folder / 'tuning'}",
        "experiment=mlproject-test",
        cwd=store.folder,
        entry_point="tune",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


MODELS_EXPERIMENT = "mlproject-models"


@pytest.fixture(scope="module")
def trained_on_digits(project, store) -> str:
    """`mlflow run -e train` of its default recipe (`default`, a four-network ensemble) made small
    (one epoch on 300 digits): the id of the run, whose model the evaluate and promote entry
    points take."""
    result = mlflow_run(
        project,
        *("dataset=digits", "limit=300", "epochs=1"),
        cwd=store.folder,
        experiment=MODELS_EXPERIMENT,
        entry_point="train",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (announced,) = [line for line in result.stdout.splitlines() if line.startswith("MLflow run ")]
    return announced.split()[2]


def runs_of_kind(kind: str) -> list:
    return [run for run in all_runs(MODELS_EXPERIMENT) if run.data.tags.get("digitml.kind") == kind]


def test_every_entry_point_of_the_mlproject_runs_here():
    """A new entry point needs its run in this module."""
    entry_points = yaml.safe_load((REPO_ROOT / "MLproject").read_text())["entry_points"]
    assert set(entry_points) == {"main", "train", "tune", "evaluate", "promote"}


def test_mlflow_run_train_trains_the_default_recipe(trained_on_digits, store):
    (run,) = runs_of_kind("train")
    assert run.info.run_id == trained_on_digits and run.info.status == "FINISHED"
    assert run.data.params["dataset"] == "digits" and run.data.tags["config"] == "default"
    assert run.data.params["ensemble"] == "small×2+stem×2"


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


def test_mlflow_run_trains_in_the_recipes_experiment_and_writes_nothing_into_the_project(
    project, trained
):
    """Without --experiment-name, MLflow puts its own (launcher) run in Default; ours goes to the
    recipe's experiment, and the launcher is named after it. The working files go to the user's
    cache folder, and none is left there."""
    (launcher,) = all_runs("Default")
    (run,) = all_runs("digitml")
    printed = f"MLflow run {run.info.run_id} (fast-small-s42) in experiment 'digitml'"
    assert printed in trained.result.stdout
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
    after = {path.relative_to(project) for path in project.rglob("*")} - set(trained.before)
    assert {path.parts[0] for path in after} <= {"mlruns"}
    assert (trained.cache / "digitml").is_dir()  # the work folder was used, and left with no file
    assert [path for path in (trained.cache / "digitml").rglob("*") if path.is_file()] == []


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
    assert "Invalid value for '--epochs': -2 is not in the range x>=1" in result.stderr


def search_runs() -> dict:
    """The search's runs by kind (`launcher`: MLflow's own), trials under `trial-01`, ..."""
    runs = all_runs("mlproject-test")
    by_kind = {run.data.tags.get("digitml.kind", "launcher"): run for run in runs}
    by_kind.update(
        {run.info.run_name: run for run in runs if run.info.run_name.startswith("trial-")}
    )
    return by_kind


def test_mlflow_run_tune_runs_a_tiny_search(searched):
    kinds = sorted(
        run.data.tags.get("digitml.kind", "launcher") for run in all_runs("mlproject-test")
    )
    assert kinds == ["best", "launcher", "trial", "trial", "tune"]
    runs = search_runs()
    search_run, launcher = runs["tune"], runs["launcher"]
    assert "mlflow.parentRunId" not in search_run.data.tags  # two levels: search, trials
    assert launcher.data.tags["digitml.run_id"] == search_run.info.run_id
    assert search_run.info.run_name == "tune"  # the shipped search, experiments/tune.yaml
    assert runs["best"].info.run_name in {"best-trial-01", "best-trial-02"}
    assert {"trial-01", "trial-02"} <= set(runs)
    assert "limit" not in search_run.data.params  # unset: no 'None' param


@pytest.fixture(scope="module")
def ui(store, trained, searched):
    """`mlflow server` (one worker) on the store, and one headless Chromium to look at it."""
    if not (CHROMIUM and CHROMEDRIVER):
        missing("chromium", HOW_TO_GET)
    port = free_port()
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [
            *(str(bin_dir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)),
            *("--backend-store-uri", store.uri, "--workers", "1"),
        ],
        cwd=store.folder,
        env={**os.environ, "PATH": str(bin_dir) + os.pathsep + os.environ["PATH"]},
        stdout=subprocess.DEVNULL,
        stderr=(store.folder / "server.log").open("w"),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health", server, store.folder / "server.log", timeout=120)
        with chromium(store.folder / "profile", window="1500,850") as driver:
            yield SimpleNamespace(url=url, driver=driver)
    finally:
        stop_process(server)


def shown(driver, text: str, seconds: float = 60):
    located = (By.XPATH, f"//*[text()='{text}']")
    return WebDriverWait(driver, seconds).until(
        expected_conditions.visibility_of_element_located(located)
    )


def loaded_artifact_images(driver) -> list[int]:
    """The widths of the artifact images the page has loaded (fetched as blobs), or [] so far."""
    images = driver.find_elements("xpath", "//img[starts-with(@src, 'blob:')]")
    return sorted({image.get_property("naturalWidth") for image in images} - {0})


def keep(driver, name: str) -> None:
    """Save the page as `name` where DIGITML_SCREENSHOT_DIR says."""
    folder = os.environ.get("DIGITML_SCREENSHOT_DIR")
    if folder:
        for close in driver.find_elements("xpath", "//button[@aria-label='Close']"):
            close.click()  # the AI assistant's panel, open the first time
        driver.save_screenshot(str(Path(folder) / name))


def test_the_ui_opens_the_search_on_its_runs_named_as_the_terminal_names_them(ui):
    runs = search_runs()
    experiment_id = runs["tune"].info.experiment_id
    driver = ui.driver
    driver.get(f"{ui.url}/#/experiments/{experiment_id}?{MODEL_TRAINING}")
    search = shown(driver, "tune")
    assert f"/experiments/{experiment_id}/runs" in driver.current_url  # not GenAI traces
    shown(driver, "mlflow run → tune")
    row = search.find_element("xpath", "./ancestor::div[contains(@class, 'ag-cell')][1]")
    row.find_element("tag name", "button").click()  # the search's trials, nested under it
    for name in ("trial-01", "trial-02", runs["best"].info.run_name):
        shown(driver, name)
    keep(driver, "mlflow-runs.png")


def test_the_ui_shows_a_training_runs_own_confusion_matrix(ui):
    (run,) = all_runs("digitml")
    page = (
        f"{ui.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        f"/artifacts/confusion_matrix.png?{MODEL_TRAINING}"
    )
    ui.driver.get(page)
    shown(ui.driver, "fast-small-s42")
    widths = WebDriverWait(ui.driver, 60).until(loaded_artifact_images)
    assert widths == [700]  # ours (7 x 6 inches at 100 dpi); MLflow's evaluation draws 779
    keep(ui.driver, "mlflow-confusion-matrix.png")
