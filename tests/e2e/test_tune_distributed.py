"""A distributed search for real: `mlflow server` on loopback, one chief, two workers, processes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from serving import free_port, stop_process, wait_for_http

from conftest import CliProcess, invoke_cli, new_store

SEARCH = """\
base_config: fast
tuner: random
max_trials: 4
epochs: 1
best_epochs: 1
dataset: digits
experiment: distributed-test
search_space:
  model_params.dense_units: {type: int, min: 16, max: 128, step: 8}
"""


@pytest.fixture
def tracking_server(empty_store, tmp_path, monkeypatch):
    """`mlflow server` with a SQLite backend and served artifacts, on a free loopback port."""
    port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    server = subprocess.Popen(
        [
            shutil.which("mlflow", path=venv_bin) or "mlflow",
            "server",
            "--backend-store-uri",
            new_store(empty_store, tmp_path),
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("w"),
        # The job runner's extra processes serve nothing a search uses and slow the start.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    wait_for_http(f"{uri}/health", server, tmp_path / "server.log", timeout=90)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    stop_process(server)
    mlflow.set_tracking_uri(None)


def start_tune(cwd, *args) -> CliProcess:
    return CliProcess("tune", "--config", "search.yaml", *args, cwd=cwd)


def test_chief_and_two_workers_share_one_search(tracking_server, tmp_path, monkeypatch):
    (tmp_path / "search.yaml").write_text(SEARCH)
    oracle = f"127.0.0.1:{free_port()}"
    chief = start_tune(tmp_path, "--role", "chief", "--oracle", oracle)
    chief.read_until("oracle listening")  # as a user would: workers join a running search
    workers = [
        start_tune(tmp_path, "--role", "worker", "--oracle", oracle, "--worker-id", f"w{n}")
        for n in (1, 2)
    ]
    try:
        outputs = [process.finish(timeout=600) for process in [chief, *workers]]
    finally:
        for process in [chief, *workers]:
            process.process.kill()
    assert [process.returncode for process in [chief, *workers]] == [0, 0, 0], [
        process.stderr[-2000:] for process in [chief, *workers]
    ]
    for out in outputs[1:]:
        assert "the search is complete" in out

    experiment = mlflow.get_experiment_by_name("distributed-test")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    (parent,) = [run for run in runs if run.data.tags.get("digitml.kind") == "tune"]
    trials = [run for run in runs if run.data.tags.get("digitml.kind") == "trial"]
    assert sorted(run.data.tags["digitml.trial_id"] for run in trials) == ["0", "1", "2", "3"]
    assert {run.data.tags["mlflow.parentRunId"] for run in trials} == {parent.info.run_id}
    assert all(run.info.status == "FINISHED" for run in trials)
    assert parent.info.status == "FINISHED" and "best_val_accuracy" in parent.data.metrics
    assert parent.data.tags["digitml.oracle"] == oracle
    worker_trials = sum(out.count(" of 4  ") for out in outputs[1:])
    assert worker_trials == 4

    monkeypatch.chdir(tmp_path)
    late = invoke_cli("tune", "--config", "search.yaml", "--role", "worker", "--oracle", oracle)
    assert late.exit_code == 0, late.stderr[-2000:]
    assert (
        late.stdout.strip()
        .splitlines()[-1]
        .endswith(f"no search is running at {oracle} (experiment 'distributed-test')")
    )


def test_oracle_address_must_be_host_and_port(tmp_path, monkeypatch):
    (tmp_path / "search.yaml").write_text(SEARCH)
    monkeypatch.chdir(tmp_path)
    result = invoke_cli(
        "tune", "--config", "search.yaml", "--role", "chief", "--oracle", "localhost"
    )
    assert result.exit_code == 2
    assert "--oracle" in result.stderr and "expected HOST:PORT, got 'localhost'" in result.stderr
