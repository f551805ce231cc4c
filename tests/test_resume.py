"""A training run killed with SIGKILL continues in the same MLflow run, losing at most one epoch."""

import signal

import mlflow

from conftest import all_runs, kill_at, run_cli, start_slow_training

EPOCHS = 6
KILL_AFTER = 3


def _train_until_epoch(cwd, epoch: int) -> str:
    """Start training, SIGKILL it once `epoch` is logged; return the printed run id."""
    process = start_slow_training(cwd, epochs=EPOCHS, experiment="resume-test")
    lines = kill_at(process, f"epoch {epoch}/")
    assert process.returncode == -signal.SIGKILL
    (announce,) = [line for line in lines if line.startswith("MLflow run ")]
    return announce.split()[2]


def test_killed_run_resumes_in_the_same_run_from_its_last_epoch(tracking_uri, tmp_path):
    run_id = _train_until_epoch(tmp_path, KILL_AFTER)
    assert mlflow.get_run(run_id).info.status == "RUNNING"

    result = run_cli("train", "--resume", run_id, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    resumed_epochs = [
        line.split(" - ")[0] for line in result.stdout.splitlines() if line.startswith("epoch ")
    ]
    assert resumed_epochs == [f"epoch {n}/{EPOCHS}" for n in range(KILL_AFTER + 1, EPOCHS + 1)]
    assert len(all_runs("resume-test")) == 1
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_accuracy")]
    assert sorted(steps) == list(range(EPOCHS))
    assert "test_accuracy" in run.data.metrics
    assert not (tmp_path / "checkpoints" / run_id).exists()


def test_finished_run_cannot_be_resumed(tracking_uri, tmp_path):
    finished = run_cli(
        "train",
        "--dataset",
        "digits",
        "--config",
        "fast",
        "--experiment",
        "resume-test",
        cwd=tmp_path,
    )
    run_id = finished.stdout.split("run_id: ")[1].split()[0]
    result = run_cli("train", "--resume", run_id, cwd=tmp_path)
    assert result.returncode == 1
    assert "already finished" in result.stderr


def test_resume_refuses_other_options(tracking_uri, tmp_path):
    result = run_cli("train", "--resume", "abc123", "--epochs", "3", cwd=tmp_path)
    assert result.returncode == 2
    assert "drop --epochs" in result.stderr and "Traceback" not in result.stderr
