"""A disk that fills up while `digitml train` logs its artifacts, for real: the artifact store on a
1 MB tmpfs (room for the run's files and figures, not for its first model), then the space given
back and the run resumed. Real processes, a real SQLite store beside the small disk."""

from types import SimpleNamespace

import mlflow
import pytest
from small_disk import small_disk, unavailable

from conftest import logged_models, missing, new_store, run_cli, tracking_at

SMALL, ENOUGH = "1m", "64m"
RUN_FILES = {"config.yaml", "training_curves.png", "confusion_matrix.png", "model_summary.txt"}


@pytest.fixture(scope="module")
def disk_full(empty_store, tmp_path_factory):
    """`digitml train` with its artifacts on the full disk, then `--resume` once it is resized;
    stored record checked inside the namespace's view: `run_id`, `failed` and `resumed` (the two
    CompletedProcesses), `status_after_failure`, `artifacts_of` (a run or logged model's artifact
    folder, read through the namespace)."""
    why = unavailable()
    if why:
        missing("user namespaces", why)
    folder = tmp_path_factory.mktemp("disk-full")
    (folder / "mlruns").mkdir()  # the store's artifact root, where the tmpfs goes
    with (
        tracking_at(new_store(empty_store, folder), folder),
        small_disk(folder / "mlruns", SMALL) as disk,
    ):
        train = ("train", "--config", "fast", "--dataset", "digits", "--epochs", "2")
        failed = run_cli(*train, cwd=folder, within=disk.within(folder))
        run_id = failed.stdout.split("MLflow run ", 1)[1].split()[0]
        status_after_failure = mlflow.get_run(run_id).info.status
        disk.resize(ENOUGH)
        resumed = run_cli("train", "--resume", run_id, cwd=folder, within=disk.within(folder))

        def artifacts_of(uri: str) -> set[str]:
            local = disk.outside_path(uri.removeprefix("file://"))
            return {path.name for path in local.rglob("*") if path.is_file()}

        yield SimpleNamespace(
            run_id=run_id,
            failed=failed,
            resumed=resumed,
            status_after_failure=status_after_failure,
            artifacts_of=artifacts_of,
        )


def test_a_full_disk_fails_the_run_with_a_message_saying_how_to_resume(disk_full):
    failed = disk_full.failed
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr
    (message,) = [line for line in failed.stderr.splitlines() if line.startswith("Error: ")]
    assert message.startswith("Error: no space left on the device writing ")
    assert f"run {disk_full.run_id} is marked FAILED" in message
    assert message.endswith(
        f"free some space, then continue with: digitml train --resume {disk_full.run_id}"
    )
    assert disk_full.status_after_failure == "FAILED"


def test_once_space_is_back_resume_completes_the_record_without_training(disk_full):
    resumed = disk_full.resumed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not [line for line in resumed.stdout.splitlines() if line.startswith("epoch ")]
    assert "Warning" not in resumed.stderr
    run = mlflow.get_run(disk_full.run_id)
    assert run.info.status == "FINISHED"
    assert {"train_seconds", "test_accuracy"} <= set(run.data.metrics)
    assert RUN_FILES <= disk_full.artifacts_of(run.info.artifact_uri)
    assert logged_models(disk_full.run_id) == {"keras_model": "READY", "model": "READY"}
    for model in mlflow.search_logged_models(
        filter_string=f"source_run_id = '{disk_full.run_id}'",
        output_format="list",
        experiment_ids=[run.info.experiment_id],
    ):
        assert "MLmodel" in disk_full.artifacts_of(model.artifact_location)
