"""End to end: what a practitioner sees in the MLflow UI (`mlflow server`, headless Chromium) after
one search and one training: the experiment opens on its runs, named as the terminal names them,
and a run's confusion matrix is ours. With DIGITML_SCREENSHOT_DIR set, the pages are saved there
(the README's pictures in docs/ are made so)."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from browser import CHROMEDRIVER, CHROMIUM, MISSING, chromium
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from serving import free_port, stop_process, wait_for_http

from conftest import all_runs, invoke_cli, new_store, tracking_at

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=MISSING)

EXPERIMENT = "ui-test"
SEARCH = """base_config: fast
tuner: random
max_trials: 2
epochs: 1
best_epochs: 1
search_space:
  model_params.dense_units: {type: int, min: 16, max: 64, step: 16}
"""
MODEL_TRAINING = "workflowType=machine_learning"  # the UI's "Model training" view, not GenAI


@pytest.fixture(scope="module")
def ui(empty_store, tmp_path_factory):
    """A store with a two-trial search and a training on digits, and `mlflow server` on it."""
    folder = tmp_path_factory.mktemp("ui")
    (folder / "search.yaml").write_text(SEARCH)
    with tracking_at(new_store(empty_store, folder), folder) as uri:
        for command in (
            ("tune", "--config", str(folder / "search.yaml")),
            ("train", "--config", "fast"),
        ):
            result = invoke_cli(*command, "--dataset", "digits", "--experiment", EXPERIMENT)
            assert result.exit_code == 0, result.output[-3000:]
        runs = {run.info.run_name: run for run in all_runs(EXPERIMENT)}
        port = free_port()
        bin_dir = str(Path(sys.executable).parent)
        server = subprocess.Popen(
            [
                *(str(Path(bin_dir) / "mlflow"), "server", "--host", "127.0.0.1"),
                *("--port", str(port), "--backend-store-uri", uri),
            ],
            cwd=folder,
            env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]},
            stdout=subprocess.DEVNULL,
            stderr=(folder / "server.log").open("w"),
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_http(f"{url}/health", server, folder / "server.log", timeout=120)
            experiment_id = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
            yield SimpleNamespace(url=url, experiment_id=experiment_id, runs=runs, folder=folder)
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
    """Save the page as `name` where DIGITML_SCREENSHOT_DIR says, once it has settled."""
    folder = os.environ.get("DIGITML_SCREENSHOT_DIR")
    if folder:
        driver.find_element("xpath", "//button[@aria-label='Close']").click()  # the AI assistant
        driver.implicitly_wait(1)
        driver.save_screenshot(str(Path(folder) / name))


def test_the_experiment_opens_on_its_runs_named_as_the_terminal_names_them(ui, tmp_path):
    best = next(name for name in ui.runs if name.startswith("best-trial-"))
    assert {"tune-search", "trial-01", "trial-02", "fast-small-s42", best} == set(ui.runs)
    with chromium(tmp_path / "profile", window="1500,850") as driver:
        driver.get(f"{ui.url}/#/experiments/{ui.experiment_id}?{MODEL_TRAINING}")
        shown(driver, "fast-small-s42")
        assert f"/experiments/{ui.experiment_id}/runs" in driver.current_url  # not traces
        search = shown(driver, "tune-search")
        row = search.find_element("xpath", "./ancestor::div[contains(@class, 'ag-cell')][1]")
        row.find_element("tag name", "button").click()  # the search's trials, nested under it
        for name in ("trial-01", "trial-02", best):
            shown(driver, name)
        keep(driver, "mlflow-runs.png")


def test_a_training_run_shows_our_confusion_matrix(ui, tmp_path):
    run = ui.runs["fast-small-s42"]
    page = (
        f"{ui.url}/#/experiments/{ui.experiment_id}/runs/{run.info.run_id}"
        f"/artifacts/confusion_matrix.png?{MODEL_TRAINING}"
    )
    with chromium(tmp_path / "profile", window="1500,850") as driver:
        driver.get(page)
        shown(driver, "classification_report.json")
        widths = WebDriverWait(driver, 60).until(loaded_artifact_images)
        assert widths == [700]  # ours (7 x 6 inches at 100 dpi); MLflow's evaluation draws 779
        keep(driver, "mlflow-confusion-matrix.png")
