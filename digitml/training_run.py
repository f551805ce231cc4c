"""One tracked training run, end to end: data -> fit -> test evaluation -> MLflow record."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import yaml

from digitml import tracking
from digitml.config import TrainConfig, config_from_dict, work_dir
from digitml.data import DigitData, load_dataset, make_splits
from digitml.errors import UserError
from digitml.precision import resolve_precision
from digitml.train import predict_probabilities, train_model

EXAMPLE_IMAGES = 5


class ResumeError(UserError):
    """The run asked for cannot be resumed; the message says why."""


@dataclass
class RunOutcome:
    run_id: str
    metrics: dict[str, float]
    train_seconds: float


def run_training(
    config: TrainConfig,
    data: DigitData | None = None,
    resume_run_id: str | None = None,
    checkpoint_root: Path | None = None,
    progress: str = "lines",
    kind: str = "train",
    run_name: str | None = None,
) -> RunOutcome:
    """Train `config` in an MLflow run (or continue `resume_run_id`); load data before the run starts.

    Inside an active run (a search), the training run is its child. The run records the precision
    it trained in ("auto" resolved), so a resume on another machine computes the same way.
    """
    config = dataclasses.replace(config, precision=resolve_precision(config.precision))
    data = data or load_dataset(config.dataset, config.data_dir)
    splits = make_splits(data, config.val_fraction, config.seed, config.limit)
    name = run_name or training_run_name(config)
    with tracking.tracked_run(config.experiment, run_id=resume_run_id, run_name=name) as run:
        run_id = run.info.run_id
        experiment = mlflow.get_experiment(run.info.experiment_id).name
        print(f"MLflow run {run_id} ({run.info.run_name}) in experiment '{experiment}'", flush=True)
        if resume_run_id is None:
            tracking.log_run_config(config, splits, kind=kind)
            tracking.log_datasets(splits)
        backup_dir = (checkpoint_root or work_dir() / "checkpoints") / run_id
        # A resume whose every epoch is backed up (killed while logging) trains no more.
        result = train_model(
            config,
            splits,
            [tracking.EpochMetricsLogger()],
            backup_dir=backup_dir,
            progress=progress,
        )
        # What an interrupted process recorded in full is kept, not logged twice.
        logged = mlflow.get_run(run_id).data.metrics
        if "train_seconds" not in logged:
            tracking.log_training_summary(result.model, run_id, result.train_seconds)
        if "test_accuracy" in logged:
            metrics = {key: value for key, value in logged.items() if key.startswith("test_")}
        else:
            probabilities = predict_probabilities(result.model, splits.test_images)
            metrics = tracking.log_test_results(
                splits.test_images, splits.test_labels, probabilities
            )
        with tempfile.TemporaryDirectory() as scratch:
            tracking.log_models(result.model, splits.test_images[:EXAMPLE_IMAGES], Path(scratch))
        shutil.rmtree(backup_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # the checkpoints folder, if no other run uses it
            backup_dir.parent.rmdir()
    return RunOutcome(run_id, metrics, logged.get("train_seconds", result.train_seconds))


def training_run_name(config: TrainConfig) -> str:
    """Recipe, networks and seed, as a person scans a list of runs: `default-small×2+stem×2-s42`,
    `fast-stem-s1`."""
    return f"{config.name}-{config.ensemble_label}-s{config.seed}"


def resumable_config(run_id: str, data_dir: str | None = None) -> TrainConfig:
    """The config of an unfinished run (data read from `data_dir` if given), else ResumeError."""
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise ResumeError(f"run {run_id} not found in {mlflow.get_tracking_uri()}") from error
    if run.info.status == "FINISHED":
        raise ResumeError(f"run {run_id} already finished; nothing to resume")
    try:
        raw = yaml.safe_load(tracking.read_run_config(run_id))
    except mlflow.exceptions.MlflowException as error:  # never written, or its store is gone
        raise ResumeError(
            f"run {run_id} cannot be resumed: its config is not readable at {run.info.artifact_uri}"
        ) from error
    if data_dir:
        raw["data_dir"] = data_dir
    return config_from_dict(raw, source=f"run {run_id}")
