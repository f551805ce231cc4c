"""What every training run records in MLflow: its status, params, per-epoch metrics, datasets,
test results, figures and models."""

from __future__ import annotations

import base64
import importlib.metadata
import io
import json
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import LoggedModelStatus, RunStatus
from mlflow.environment_variables import (
    MLFLOW_EXPERIMENT_ID,
    MLFLOW_EXPERIMENT_NAME,
    MLFLOW_RUN_ID,
)
from mlflow.models import ModelSignature, infer_signature
from mlflow.types.schema import Array, ColSpec, Schema
from PIL import Image

from digitml import reports
from digitml.config import ConfigError, TrainConfig
from digitml.data import Splits, content_digest
from digitml.pyfunc import IMAGING_ARTIFACT, KERAS_MODEL_ARTIFACT, KERAS_MODEL_FILE

CONFIG_ARTIFACT = "config.yaml"
DEFAULT_EXPERIMENT_ID = "0"  # MLflow's Default experiment
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # what the MLflow 3 UI opens an experiment on
MODEL_TRAINING = "custom_model_development"
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # what the MLflow UI shows as the run's commit
KERAS_MODEL_NAME = KERAS_MODEL_ARTIFACT  # the native Keras model's name beside the pyfunc
PYFUNC_MODEL_NAME = "model"
PACKAGE_DIR = Path(__file__).resolve().parent
PYFUNC_CODE = PACKAGE_DIR / "pyfunc.py"
IMAGING_CODE = PACKAGE_DIR / "imaging.py"  # the preprocessing, which the served model carries
CURVE_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
# The distributions the served model imports (pyfunc.py, imaging.py) and TensorFlow, Keras' backend.
SERVED_DISTRIBUTIONS = ("mlflow", "keras", "tensorflow", "numpy", "pandas", "pillow")
KERAS_MODEL_DISTRIBUTIONS = ("mlflow", "keras", "tensorflow")


def git_commit() -> str | None:
    """The commit of the checkout digitml runs from, if it is one."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=PACKAGE_DIR,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def flat_params(config: TrainConfig) -> dict[str, Any]:
    """Every resolved hyperparameter as an MLflow param; nested settings as `section.key`."""
    params: dict[str, Any] = {}
    for key, value in config.to_dict().items():
        if key == "model_params":
            params.update({f"model_params.{name}": v for name, v in value.items()})
        elif key == "other_members":  # a mixed ensemble's other architectures, whole
            if value:
                params[key] = json.dumps(value, separators=(",", ":"))
        elif isinstance(value, dict):
            params[key] = "true"
            params.update({f"{key}.{name}": v for name, v in value.items()})
        elif key in ("early_stopping", "reduce_lr"):  # a callback switched off
            params[key] = "false"
        elif value is not None:  # unset (data_dir, limit): no param rather than 'None'
            params[key] = value
    params["augmentation"] = str(config.augmentation.enabled).lower()
    params["ensemble"] = config.ensemble_label
    return params


def chosen_experiment() -> str | None:
    """The experiment the environment names, if any: MLFLOW_EXPERIMENT_NAME, else the experiment
    of MLFLOW_EXPERIMENT_ID (which `mlflow run --experiment-name` sets). Under `mlflow run`, the
    Default experiment (id 0) is MLflow's fallback rather than a choice, so it does not count."""
    if MLFLOW_EXPERIMENT_NAME.get():
        return MLFLOW_EXPERIMENT_NAME.get()
    experiment_id = MLFLOW_EXPERIMENT_ID.get()
    if not experiment_id or (experiment_id == DEFAULT_EXPERIMENT_ID and MLFLOW_RUN_ID.get()):
        return None
    try:
        return mlflow.MlflowClient().get_experiment(experiment_id).name
    except mlflow.exceptions.MlflowException as error:
        raise ConfigError(
            f"MLFLOW_EXPERIMENT_ID={experiment_id}: no such experiment in {mlflow.get_tracking_uri()}"
        ) from error


def experiment_id_of(name: str) -> str:
    """The experiment's id, creating it if needed, marked as model training (unless it says what
    it is already) so the MLflow UI opens it on its runs rather than on GenAI traces.

    Not mlflow.set_experiment, which exports MLFLOW_EXPERIMENT_ID to every process this one
    starts: a choice `chosen_experiment` would then take for the user's."""
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except mlflow.exceptions.MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)  # created by another process meanwhile
    if EXPERIMENT_KIND_TAG not in found.tags:
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return found.experiment_id


@contextmanager
def tracked_run(
    experiment: str,
    run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or re-enter) a run that always ends FINISHED, FAILED or KILLED (Ctrl-C, SIGTERM).

    Inside an active run the new one is its child, in the same experiment. Under `mlflow run`,
    the run `mlflow run` made (its launcher, holding the MLproject parameters as typed) is left
    beside ours and named after it: ours goes where `experiment` says, not into the launcher.
    """
    launcher = MLFLOW_RUN_ID.get()
    if launcher and mlflow.active_run() is None:
        MLFLOW_RUN_ID.unset()  # else mlflow.start_run would re-enter the launcher
    parent = mlflow.active_run()
    if parent is not None:
        experiment_id = parent.info.experiment_id
    else:
        experiment_id = experiment_id_of(experiment)
    run = mlflow.start_run(
        run_id=run_id,
        experiment_id=experiment_id,
        run_name=run_name,
        nested=parent is not None,
        tags=tags,
    )
    if launcher and parent is None:
        point_launcher_to(launcher, run)
    with ending():
        yield run


def point_launcher_to(launcher_id: str, run: mlflow.ActiveRun) -> None:
    """Name `mlflow run`'s own run after ours and link the two, so either leads to the other."""
    client = mlflow.MlflowClient()
    experiment = client.get_experiment(run.info.experiment_id).name
    client.set_tag(launcher_id, "mlflow.runName", f"mlflow run → {run.info.run_name}")
    client.set_tag(launcher_id, "digitml.run_id", run.info.run_id)
    client.set_tag(
        launcher_id,
        "mlflow.note.content",
        f"digitml recorded this command as run {run.info.run_id} ({run.info.run_name}) "
        f"in experiment '{experiment}'.",
    )
    mlflow.set_tag("digitml.launcher_run_id", launcher_id)


@contextmanager
def ending() -> Iterator[None]:
    """End the active run as FINISHED, KILLED on interrupt, or FAILED on any error."""
    try:
        yield
    except KeyboardInterrupt:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def log_run_config(config: TrainConfig, splits: Splits, kind: str = "train") -> None:
    """Params, the resolved config as config.yaml, and the identifying tags of a training run."""
    params = flat_params(config)
    params.update(train_size=len(splits.train_labels), val_size=len(splits.val_labels))
    mlflow.log_params(params)
    mlflow.log_text(config.to_yaml(), CONFIG_ARTIFACT)
    tags = {"config": config.name, "digitml.kind": kind}
    commit = git_commit()
    if commit:
        tags[GIT_COMMIT_TAG] = commit
    mlflow.set_tags(tags)


def read_run_config(run_id: str) -> str:
    """The config.yaml text a run was started with."""
    return mlflow.artifacts.load_text(f"runs:/{run_id}/{CONFIG_ARTIFACT}")


def log_datasets(splits: Splits) -> None:
    """Training, validation and test sets as run inputs, digested over their full content."""
    parts = {
        "training": (splits.train_images, splits.train_labels),
        "validation": (splits.val_images, splits.val_labels),
        "test": (splits.test_images, splits.test_labels),
    }
    log_dataset_parts(splits.data.name, splits.data.source, parts)


def log_dataset_parts(
    name: str, source: str, parts: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """Each (images, labels) part as a run input named `<name>-<context>`."""
    for context, (images, labels) in parts.items():
        with warnings.catch_warnings():  # MLflow warns that a plain source string is ambiguous
            warnings.simplefilter("ignore")
            dataset = mlflow.data.from_numpy(
                images,
                targets=labels,
                source=source,
                name=f"{name}-{context}",
                digest=content_digest(images, labels),
            )
        log_input_beside_other_runs(dataset, context)


def log_input_beside_other_runs(dataset: Any, context: str) -> None:
    """mlflow.log_input, once more if another run stored the same dataset at the same moment:
    MLflow's store looks a dataset up, then inserts it, so the second of two runs doing that at
    once fails on the unique key (seen with two trainings on one SQLite store). The second try
    finds the stored dataset."""
    try:
        mlflow.log_input(dataset, context=context)
    except mlflow.exceptions.MlflowException as error:
        if "unique constraint" not in str(error).lower():  # SQLite's and PostgreSQL's wording
            raise
        mlflow.log_input(dataset, context=context)


class EpochMetricsLogger(keras.callbacks.Callback):
    """Logs loss, accuracy, val_loss, val_accuracy, epoch_learning_rate (the rate at the epoch's
    end: not `learning_rate`, the param that holds the schedule's peak) and epoch_seconds,
    step = epoch (counted from `first_step`: a training that continues an earlier one goes on
    numbering).

    An epoch the run already holds is not logged again: a process killed after logging an epoch
    but before its backup was written trains that epoch again when resumed."""

    def __init__(self, first_step: int = 0) -> None:
        super().__init__()
        self.first_step = first_step

    def on_train_begin(self, logs: dict | None = None) -> None:
        history = mlflow.MlflowClient().get_metric_history(
            mlflow.active_run().info.run_id, "epoch_seconds"
        )
        self._logged_steps = {metric.step for metric in history}

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = {
            key: float(value) for key, value in (logs or {}).items() if key != "learning_rate"
        }
        values["epoch_learning_rate"] = float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        )
        values["epoch_seconds"] = time.perf_counter() - self._epoch_started
        step = self.first_step + epoch
        if step not in self._logged_steps:
            mlflow.log_metrics(values, step=step)  # epoch_seconds among them, in one write


def log_test_results(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray
) -> dict[str, float]:
    """Test metrics plus the confusion matrix, classification report and misclassified grid."""
    predicted = probabilities.argmax(axis=1)
    metrics = reports.test_metrics(labels, probabilities)
    matrix = reports.confusion(labels, predicted)
    mlflow.log_figure(reports.confusion_figure(matrix), "confusion_matrix.png")
    mlflow.log_text(reports.confusion_csv(matrix), "confusion_matrix.csv")
    report_text, report_dict = reports.classification_report(labels, predicted)
    mlflow.log_text(report_text, "classification_report.txt")
    mlflow.log_text(json.dumps(report_dict, indent=2), "classification_report.json")
    mlflow.log_figure(
        reports.misclassified_figure(images, labels, probabilities), "misclassified.png"
    )
    reports.close_figures()
    mlflow.log_metrics(metrics)  # last: a run holding them holds the whole test record
    return metrics


def logged_history(run_id: str, keys: tuple[str, ...] = CURVE_METRICS) -> dict[str, list[float]]:
    """Per-epoch values as MLflow holds them: complete even when the run was resumed."""
    client = mlflow.MlflowClient()
    return {
        key: [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
        for key in keys
    }


def log_training_summary(model: keras.Model, run_id: str, seconds: float) -> None:
    """training_curves.png, model_summary.txt and train_seconds."""
    mlflow.log_figure(reports.training_curves_figure(logged_history(run_id)), "training_curves.png")
    reports.close_figures()
    summary: list[str] = []
    model.summary(print_fn=lambda line, **_: summary.append(line))
    mlflow.log_text("\n".join(summary), "model_summary.txt")
    mlflow.log_metric("train_seconds", seconds)  # last: a run holding it holds the whole summary


def pinned_requirements(distributions: tuple[str, ...]) -> list[str]:
    """`name==version` of each installed distribution.

    Given explicitly, so MLflow does not infer them: inference reloads the model in two
    subprocesses (~21 s per model) and pins `digitml`, which no package index has.
    """
    return [f"{name}=={importlib.metadata.version(name)}" for name in distributions]


def uncompiled(model: keras.Model) -> keras.Model:
    """`model` without its training set-up: saved compiled, it would need digitml's registered
    loss to load."""
    copy = type(model).from_config(model.get_config())  # clone_model would compile it again
    copy.set_weights(model.get_weights())
    return copy


def log_models(model: keras.Model, example_images: np.ndarray, work_dir: Path) -> None:
    """The native Keras model (`keras_model`) and the pyfunc digit classifier (`model`), both
    loadable where digitml is not installed. In a resumed run, each is logged once: one logged in
    full before the interruption is kept, one left half-logged is replaced."""
    model = uncompiled(model)
    logged = finished_models(mlflow.active_run().info)
    if KERAS_MODEL_NAME not in logged:
        example_probabilities = np.asarray(model.predict_on_batch(example_images))
        mlflow.keras.log_model(
            model,
            name=KERAS_MODEL_NAME,
            signature=infer_signature(example_images, example_probabilities),
            pip_requirements=pinned_requirements(KERAS_MODEL_DISTRIBUTIONS),
        )
    if PYFUNC_MODEL_NAME not in logged:
        keras_file = work_dir / KERAS_MODEL_FILE
        model.save(keras_file)
        mlflow.pyfunc.log_model(
            name=PYFUNC_MODEL_NAME,
            python_model=str(PYFUNC_CODE),
            artifacts={KERAS_MODEL_ARTIFACT: str(keras_file), IMAGING_ARTIFACT: str(IMAGING_CODE)},
            pip_requirements=pinned_requirements(SERVED_DISTRIBUTIONS),
            signature=SERVED_SIGNATURE,
            input_example=image_example(example_images[0]),
        )


def finished_models(run: mlflow.entities.RunInfo) -> set[str]:
    """The names of the models the run logged in full (READY). A model a killed process left
    half-logged (PENDING) is deleted, so that logging it again leaves one model of its name."""
    finished = set()
    for logged in mlflow.search_logged_models(
        experiment_ids=[run.experiment_id],
        filter_string=f"source_run_id = '{run.run_id}'",
        output_format="list",
    ):
        if logged.status == LoggedModelStatus.READY:
            finished.add(logged.name)
        else:
            mlflow.MlflowClient().delete_logged_model(logged.model_id)
    return finished


# Outputs only. An input schema would make MLflow drop unknown columns silently, and every input
# error must reach DigitClassifier.predict to get its own message; the input example shows a
# request instead.
SERVED_SIGNATURE = ModelSignature(
    outputs=Schema(
        [
            ColSpec("long", "digit"),
            ColSpec("double", "confidence"),
            ColSpec(Array("double"), "probabilities"),
        ]
    )
)


def image_example(image: np.ndarray) -> pd.DataFrame:
    """One `image` row: a 28x28 PNG (dark digit on white, as drawn), base64 as JSON carries it."""
    grey = (255 - np.asarray(image).squeeze() * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode()]})
