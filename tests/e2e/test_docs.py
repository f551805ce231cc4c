"""The commands README.md and docs/ show, run in document order as one user's session in a copy
of the project, by the substitution rule of tests/documented.py; each shown output is compared
with the real one. Then the MLflow UI that session started, in headless Chromium, showing what the
README says it shows. With DIGITML_SCREENSHOT_DIR set, the UI's pages are saved there (the
pictures in docs/ are made so)."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from browser import CHROMEDRIVER, CHROMIUM, HOW_TO_GET, chromium
from documented import (
    DOCUMENTS,
    REPO_ROOT,
    on_free_port,
    pointed_at,
    server_kind,
    shown_commands,
    shown_port,
    sized,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from serving import free_port, stop_process, wait_for_http

from conftest import copy_project, missing

# Commands shown but not run here, each with why (a substring of the command names it).
NOT_RUN = {
    "python3 -m venv": ".ci/run runs the README's install line itself, on a fresh clone",
    "digitml train --config fast": ".ci/stranger.py runs it exactly as written, in a clean HOME",
    'pip install -e ".[team]"': "it would change the environment under test; `.[dev]` holds it",
    "sudo -u postgres": "needs root and the system's PostgreSQL; test_tune_distributed.py "
    "makes its own cluster (tests/postgres.py)",
    "postgresql://mlflow:PASSWORD": "a server on a team address; test_tune_distributed.py runs "
    "this server on loopback",
    "export MLFLOW_TRACKING_URI=http://10.0.0.5": "points at that team server",
    "--oracle 10.0.0.5": "dials a team address; test_tune_distributed.py runs a chief and "
    "workers on loopback",
    "--env-manager uv": "builds the model's own environment (about a minute); test_deploy.py "
    "serves the champion so",
    "build-docker": "no Docker daemon on the test machines",
    "docker run": "no Docker daemon on the test machines",
    "[[0, 0, ...], ...]": "its payload is elided; test_serving.py posts whole pixel records",
}
HEALTH = {
    "mlflow ui": "/health",
    "mlflow models serve": "/ping",
    "digitml app": "/_stcore/health",
    "streamlit run": "/_stcore/health",
}
MODEL_TRAINING = "workflowType=machine_learning"  # the MLflow UI's "Model training" view


def not_run_reason(command: str) -> str | None:
    return next((why for part, why in NOT_RUN.items() if part in command), None)


def commands_to_run() -> list:
    """The shown commands this module runs, each once (two that are equal once sized, once)."""
    chosen, seen = [], set()
    for shown in shown_commands():
        if not_run_reason(shown.command) is None and sized(shown.command) not in seen:
            seen.add(sized(shown.command))
            chosen.append(shown)
    return chosen


def test_every_command_not_run_is_still_shown():
    """An entry of NOT_RUN whose command left the docs goes too."""
    commands = [shown.command for shown in shown_commands()]
    assert [part for part in NOT_RUN if not any(part in command for command in commands)] == []


def test_every_option_shown_for_digitml_exists():
    """Every `--option` the documents give a `digitml COMMAND` (in code blocks, synopses and
    inline code) is one of that command's options: no removed or misspelt option survives."""
    from digitml.cli import cli

    wrong = []
    for document in DOCUMENTS:
        # A command goes on over lines ending in a backslash, or indented lines of options.
        text = re.sub(r"\\\n|\n\s+(?=\[|--)", " ", (REPO_ROOT / document).read_text())
        for line in re.findall(r"digitml (\w+)([^`\n]*)", text):
            command = cli.commands.get(line[0])
            if command is None:
                continue  # prose ("digitml trains ..."), not a command
            known = {name for param in command.params for name in param.opts}
            wrong += [
                f"{document}: digitml {line[0]} {option}"
                for option in re.findall(r"(?<![\w-])--[a-z][\w-]*", line[1])
                if option not in known | {"--help"}
            ]
    assert wrong == []


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A user's shell in a copy of the project: no MLflow or digitml variable (MLflow's default
    store, in this folder; digitml's working files in the user's cache folder), the outputs of
    the commands run so far, the servers started (stopped at the end) and the free port each
    shown port was given."""
    folder = copy_project(tmp_path_factory.mktemp("user"))
    venv_bin = str(Path(sys.executable).parent)
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MLFLOW_", "DIGITML_"))
    }
    environment["PATH"] = venv_bin + os.pathsep + environment["PATH"]
    environment["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    state = SimpleNamespace(
        folder=folder,
        project_files=sorted(path.relative_to(folder) for path in folder.rglob("*")),
        cache=Path(environment["XDG_CACHE_HOME"]),
        logs=tmp_path_factory.mktemp("server-logs"),
        env=environment,
        printed={},
        ports={},
        servers={},
    )
    try:
        yield state
    finally:
        for server in state.servers.values():
            stop_process(server.popen)


def start_server(session, command: str, kind: str, where: str) -> None:
    port = free_port()
    log = session.logs / f"{port}.log"
    popen = subprocess.Popen(
        ["bash", "-c", f"exec {on_free_port(pointed_at(command, session.ports), port)}"],
        cwd=session.folder,
        env=session.env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    session.servers[where] = SimpleNamespace(popen=popen, url=url, kind=kind)
    wait_for_http(url + HEALTH[kind], popen, log, timeout=180)
    session.ports[shown_port(command)] = port


@pytest.mark.parametrize("shown", commands_to_run(), ids=lambda shown: shown.where)
def test_shown_command_runs_and_prints_what_is_shown(session, shown):
    command, kind = sized(shown.command), server_kind(shown.command)
    if kind:
        start_server(session, command, kind, shown.where)
        return
    result = subprocess.run(
        ["bash", "-c", pointed_at(command, session.ports)],
        cwd=session.folder,
        env=session.env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    session.printed[shown.command] = result.stdout
    if shown.output:
        assert_prints_as_shown(shown.output, result.stdout)


def assert_prints_as_shown(shown: str, printed: str) -> None:
    """What the docs show of an output holds for the real one, up to its numbers and the digits
    the tiny model answers: a JSON answer has every key shown and every quoted text shown (the
    parts between `...`); `digitml predict`'s lines name the same files, each with a digit and a
    confidence."""
    if shown.startswith("{"):
        assert set(re.findall(r'"(\w+)":', shown)) <= set(re.findall(r'"(\w+)":', printed))
        for text in re.findall(r'"((?:[^"\\]|\\.)*)"', shown):
            for part in text.split("..."):
                if len(part) > 12:
                    assert part in printed, f"{part!r} is shown but not printed: {printed[:500]}"
        json.loads(printed)
        return
    for line in shown.splitlines():
        path = shlex.split(line)[0]
        assert re.search(rf"^{re.escape(path)}  \d  [01]\.\d{{4}}$", printed, re.M), printed


def store(session) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{session.folder / 'mlflow.db'}")


def runs_by_name(session, experiment: str = "digitml") -> dict:
    client = store(session)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return {run.info.run_name: run for run in client.search_runs([experiment_id])}


def test_the_session_left_a_search_its_trials_and_a_champion(session):
    """`mlflow run . -e tune`: MLflow's launcher run, the search, its trials nested one level
    under it, the retrained best; then the version `promote` made champion."""
    runs = runs_by_name(session, "digitml-tune")  # the search's experiment (tune.yaml)
    search, launcher = runs["tune"], runs_by_name(session, "Default")["mlflow run → tune"]
    assert launcher.data.tags["digitml.run_id"] == search.info.run_id
    assert "mlflow.parentRunId" not in search.data.tags
    trials = [run for name, run in runs.items() if name.startswith("trial-")]
    assert sorted(run.info.run_name for run in trials) == ["trial-01", "trial-02"]
    assert {run.data.tags["mlflow.parentRunId"] for run in trials} == {search.info.run_id}
    assert "limit" not in search.data.params  # not given: no 'None' param
    (best,) = [run for run in runs.values() if run.data.tags.get("digitml.kind") == "best"]
    champion = store(session).get_model_version_by_alias("digit-classifier", "champion")
    assert champion.run_id == best.info.run_id


def test_mlflow_run_trains_in_the_recipes_experiment_and_keeps_its_files_in_the_cache(session):
    """Without --experiment-name, MLflow puts its own (launcher) run in Default; ours goes to the
    recipe's experiment, and the launcher is named after it. The project folder gets the store
    and what a command was told to write there; digitml's working files go to the user's cache
    folder, where only the search's state stays."""
    (printed,) = [out for command, out in session.printed.items() if "config=fast" in command]
    run = runs_by_name(session)["fast-small-s42"]
    assert f"MLflow run {run.info.run_id} (fast-small-s42) in experiment 'digitml'" in printed
    launcher = runs_by_name(session, "Default")["mlflow run → fast-small-s42"]
    assert launcher.data.tags["digitml.run_id"] == run.info.run_id
    assert launcher.info.status == run.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.params["experiment"] == "digitml"
    assert run.data.params["train_size"] == "270"
    assert run.data.params["model"] == "small"  # from fast.yaml: '' params keep the config's values
    assert "test_accuracy" in run.data.metrics
    files = {path.relative_to(session.folder) for path in session.folder.rglob("*")}
    added = {path.parts[0] for path in files - set(session.project_files)}
    assert added == {"mlflow.db", "mlruns", "serve-image"}  # serve-image: generate-dockerfile's
    kept = {
        path.relative_to(session.cache / "digitml").parts[:2]
        for path in (session.cache / "digitml").rglob("*")
        if path.is_file()
    }
    assert kept == {("tuning", "digitml-tune")}  # the search's state, to resume it; no checkpoint


@pytest.fixture(scope="module")
def ui(session):
    """The session's `mlflow ui`, seen in one headless Chromium."""
    if not (CHROMIUM and CHROMEDRIVER):
        missing("chromium", HOW_TO_GET)
    (server,) = [server for server in session.servers.values() if server.kind == "mlflow ui"]
    with chromium(session.folder / "profile", window="1500,850") as driver:
        yield SimpleNamespace(url=server.url, driver=driver)


def visible(driver, text: str, seconds: float = 60):
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


def test_the_ui_opens_the_search_on_its_runs_named_as_the_terminal_names_them(session, ui):
    runs = runs_by_name(session, "digitml-tune")
    experiment_id = runs["tune"].info.experiment_id
    driver = ui.driver
    driver.get(f"{ui.url}/#/experiments/{experiment_id}?{MODEL_TRAINING}")
    search = visible(driver, "tune")
    assert f"/experiments/{experiment_id}/runs" in driver.current_url  # not GenAI traces
    row = search.find_element("xpath", "./ancestor::div[contains(@class, 'ag-cell')][1]")
    row.find_element("tag name", "button").click()  # the search's trials, nested under it
    best = next(name for name in runs if name.startswith("best-"))
    for name in ("trial-01", "trial-02", best):
        visible(driver, name)
    keep(driver, "mlflow-runs.png")


def test_the_ui_shows_a_training_runs_own_confusion_matrix(session, ui):
    run = runs_by_name(session)["fast-small-s42"]
    page = (
        f"{ui.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        f"/artifacts/confusion_matrix.png?{MODEL_TRAINING}"
    )
    ui.driver.get(page)
    visible(ui.driver, "fast-small-s42")
    widths = WebDriverWait(ui.driver, 60).until(loaded_artifact_images)
    assert widths == [700]  # ours (7 x 6 inches at 100 dpi); MLflow's evaluation draws 779
    keep(ui.driver, "mlflow-confusion-matrix.png")
