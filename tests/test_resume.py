"""A training run killed with SIGKILL continues in the same MLflow run, losing at most one epoch."""

import signal
from types import SimpleNamespace

import mlflow
import pytest

from conftest import (
    all_runs,
    invoke_cli,
    new_store,
    run_cli,
    start_digits_training,
    tracking_at,
)

EPOCHS = 6
KILL_AFTER = 3


@pytest.fixture(scope="module")
def resumed(empty_store, tmp_path_factory):
    """A training SIGKILLed once epoch 3 of 6 is logged, then `digitml train --resume RUN_ID`:
    `uri`, `folder`, `result` (of the resume), `run_id`, `status_after_kill`."""
    folder = tmp_path_factory.mktemp("resume")
    uri = new_store(empty_store, folder)
    with tracking_at(uri, folder):
        process = start_digits_training(folder, epochs=EPOCHS, experiment="resume-test")
        lines = process.kill_at(f"epoch {KILL_AFTER}/")
        assert process.returncode == -signal.SIGKILL
        (announce,) = [line for line in lines if line.startswith("MLflow run ")]
        run_id = announce.split()[2]
        status_after_kill = mlflow.get_run(run_id).info.status
    result = run_cli("train", "--resume", run_id, cwd=folder, env={"MLFLOW_TRACKING_URI": uri})
    return SimpleNamespace(
        uri=uri, folder=folder, result=result, run_id=run_id, status_after_kill=status_after_kill
    )


@pytest.fixture
def in_resume_store(resumed):
    with tracking_at(resumed.uri, resumed.folder):
        yield resumed


def test_killed_run_resumes_in_the_same_run_from_its_last_epoch(in_resume_store):
    resumed = in_resume_store
    assert resumed.status_after_kill == "RUNNING"
    assert resumed.result.returncode == 0, resumed.result.stderr
    resumed_epochs = [
        line.split(" - ")[0]
        for line in resumed.result.stdout.splitlines()
        if line.startswith("epoch ")
    ]
    assert resumed_epochs == [f"epoch {n}/{EPOCHS}" for n in range(KILL_AFTER + 1, EPOCHS + 1)]
    assert len(all_runs("resume-test")) == 1
    run = mlflow.get_run(resumed.run_id)
    assert run.info.status == "FINISHED"
    history = mlflow.MlflowClient().get_metric_history(resumed.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(EPOCHS))
    assert "test_accuracy" in run.data.metrics
    assert not (resumed.folder / "checkpoints" / resumed.run_id).exists()


def test_finished_run_cannot_be_resumed(resumed):
    result = invoke_cli(
        "train", "--resume", resumed.run_id, env={"MLFLOW_TRACKING_URI": resumed.uri}
    )
    assert result.exit_code == 1
    assert f"run {resumed.run_id} already finished" in result.stderr


def test_resume_of_an_unknown_run_names_it(tracking_uri):
    result = invoke_cli("train", "--resume", "0123456789abcdef")
    assert result.exit_code == 1
    assert "run 0123456789abcdef not found" in result.stderr


def test_resume_refuses_other_options():
    result = invoke_cli("train", "--resume", "abc123", "--epochs", "3")
    assert result.exit_code == 2
    assert "drop --epochs" in result.stderr
