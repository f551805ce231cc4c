"""The team set-up for real: `mlflow server` on a throw-away PostgreSQL cluster with served
artifacts, on loopback; a distributed search (one chief, two workers, one of them SIGKILLed
mid-trial and restarted) beside a plain training, all real processes: five writers to one
store at once."""

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from postgres import HOW_TO_GET, INITDB, PG_CTL, cluster
from serving import free_port, stop_process, wait_for_http

from conftest import CliProcess, all_runs, invoke_cli, missing, start_digits_training

SEARCH = """\
base_config: fast
tuner: random
max_trials: 3
epochs: 2
best_epochs: 1
dataset: digits
limit: 300
experiment: distributed-test
search_space:
  model_params.dense_units: {type: int, min: 16, max: 128, step: 8}
"""
TRAINING_EPOCHS = 1


@pytest.fixture
def tracking_server(tmp_path, monkeypatch):
    """`mlflow server` with a PostgreSQL backend store and served artifacts, on loopback."""
    if not (INITDB and PG_CTL):
        missing("postgresql", HOW_TO_GET)
    venv_bin = str(Path(sys.executable).parent)
    port = free_port()
    with cluster(free_port()) as database:
        server = subprocess.Popen(
            [
                *(shutil.which("mlflow", path=venv_bin) or "mlflow", "server"),
                *("--backend-store-uri", database),
                *("--artifacts-destination", str(tmp_path / "artifacts")),
                *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "server.log").open("w"),
            # The job runner's extra processes serve nothing a search uses and slow the start.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        uri = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{uri}/health", server, tmp_path / "server.log", timeout=180)
            monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
            mlflow.set_tracking_uri(uri)
            yield uri
        finally:
            stop_process(server)
            mlflow.set_tracking_uri(None)


def start_tune(cwd, *args) -> CliProcess:
    return CliProcess("tune", "--config", "search.yaml", *args, cwd=cwd)


def start_worker(cwd, oracle: str, worker_id: str) -> CliProcess:
    return start_tune(cwd, "--role", "worker", "--oracle", oracle, "--worker-id", worker_id)


def trial_runs() -> list:
    return [run for run in all_runs("distributed-test") if run.data.tags["digitml.kind"] == "trial"]


def running_trial(worker_id: str) -> str | None:
    """The run id of a trial `worker_id` is running, if any."""
    for run in trial_runs():
        if run.data.tags.get("digitml.tuner_id") == worker_id and run.info.status == "RUNNING":
            return run.info.run_id
    return None


def epochs_logged(run_id: str) -> int:
    return len(mlflow.MlflowClient().get_metric_history(run_id, "val_accuracy"))


def test_a_team_search_and_a_training_share_one_postgresql_store(tracking_server, tmp_path):
    (tmp_path / "search.yaml").write_text(SEARCH)
    oracle = f"127.0.0.1:{free_port()}"
    chief = start_tune(tmp_path, "--role", "chief", "--oracle", oracle)
    chief.read_until("oracle listening")  # as a user would: workers join a running search
    workers = [start_worker(tmp_path, oracle, f"w{n}") for n in (1, 2)]
    training = start_digits_training(tmp_path, TRAINING_EPOCHS, "team-trainings")
    processes = [chief, *workers, training]
    try:
        # Killed once the trial w1 runs has logged its first epoch (of two): the trial is found
        # at a leisurely pace, then its epochs watched closely.
        interrupted = workers[0].wait_for(lambda: running_trial("w1"), "a w1 trial", interval=0.25)
        workers[0].kill_when(lambda: epochs_logged(interrupted) >= 1, "w1's first epoch")
        processes.append(start_worker(tmp_path, oracle, "w1"))  # the same id: it holds the trial
        for process in processes:
            if process is not workers[0]:
                process.finish(timeout=600)
    finally:
        for process in processes:
            process.process.kill()
    finished = [process for process in processes if process is not workers[0]]
    assert [process.returncode for process in finished] == [0] * 4, [
        process.stderr[-2000:] for process in finished
    ]

    # The search: every trial once, complete, the killed one continued in its own run.
    runs = all_runs("distributed-test")
    (parent,) = [run for run in runs if run.data.tags.get("digitml.kind") == "tune"]
    assert parent.info.status == "FINISHED" and parent.data.tags["digitml.oracle"] == oracle
    trials = trial_runs()
    assert sorted(run.data.tags["digitml.trial_id"] for run in trials) == ["0", "1", "2"]
    assert {run.data.tags["mlflow.parentRunId"] for run in trials} == {parent.info.run_id}
    client = mlflow.MlflowClient()
    for run in trials:
        assert run.info.status == "FINISHED"
        steps = [metric.step for metric in client.get_metric_history(run.info.run_id, "loss")]
        assert sorted(steps) == [0, 1], (run.data.tags["digitml.trial_id"], steps)
    assert mlflow.get_run(interrupted).data.tags["digitml.tuner_id"] == "w1"
    table = pd.read_csv(
        io.StringIO(mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/trials.csv"))
    )
    assert len(table) == 3
    versions = client.search_model_versions("name = 'digit-classifier'")
    (best,) = [run for run in runs if run.data.tags.get("digitml.kind") == "best"]
    assert [version.run_id for version in versions] == [best.info.run_id]

    # The training beside it: complete.
    (trained,) = all_runs("team-trainings")
    assert trained.info.status == "FINISHED" and "test_accuracy" in trained.data.metrics
    steps = [metric.step for metric in client.get_metric_history(trained.info.run_id, "loss")]
    assert sorted(steps) == list(range(TRAINING_EPOCHS))

    # A worker started after the search ended, told not to wait for a chief to start one.
    search = str(tmp_path / "search.yaml")
    late = invoke_cli(
        *("tune", "--config", search, "--role", "worker", "--oracle", oracle, "--chief-wait", "0")
    )
    assert late.exit_code == 0, late.stderr[-2000:]
    assert (
        late.stdout.strip()
        .splitlines()[-1]
        .endswith(f"no search is running at {oracle} (experiment 'distributed-test')")
    )


@pytest.mark.parametrize(
    "options, named",
    [
        (
            ("--role", "chief", "--oracle", "localhost"),
            "--oracle: expected HOST:PORT, got 'localhost'",
        ),
        (
            ("--role", "chief", "--chief-wait", "60"),
            "--chief-wait is a worker's: it needs --role worker",
        ),
        (
            ("--role", "worker", "--chief-wait", "-1"),
            "'--chief-wait': -1.0 is not in the range x>=0",
        ),
    ],
)
def test_a_bad_distributed_option_is_named(tmp_path, monkeypatch, options, named):
    (tmp_path / "search.yaml").write_text(SEARCH)
    monkeypatch.chdir(tmp_path)
    result = invoke_cli("tune", "--config", "search.yaml", *options)
    assert result.exit_code == 2
    assert named in result.stderr
