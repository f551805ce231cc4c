"""Everything MLflow: runs and their status, params, per-epoch metrics, datasets, figures, models."""

from __future__ import annotations

import dataclasses
import importlib.metadata
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
from mlflow.entities import RunStatus
from mlflow.environment_variables import MLFLOW_RUN_ID
from mlflow.models import infer_signature

from digitml import reports
from digitml.config import TrainConfig
from digitml.data import Splits, content_digest

CONFIG_ARTIFACT = "config.yaml"
KERAS_MODEL_NAME = "keras_model"
PYFUNC_MODEL_NAME = "model"
PACKAGE_DIR = Path(__file__).resolve().parent
PYFUNC_CODE = PACKAGE_DIR / "pyfunc.py"
IMAGING_CODE = PACKAGE_DIR / "imaging.py"  # the preprocessing, which the served model carries
CURVE_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
# The distributions the served model imports (pyfunc.py, imaging.py) and TensorFlow, Keras' backend.
SERVED_DISTRIBUTIONS = ("mlflow", "keras", "tensorflow", "numpy", "pandas", "pillow")
KERAS_MODEL_DISTRIBUTIONS = ("mlflow", "keras", "tensorflow")
ORACLE_TAG = "digitml.oracle"


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
        elif isinstance(value, dict):
            params[key] = "true"
            params.update({f"{key}.{name}": v for name, v in value.items()})
        elif key in ("early_stopping", "reduce_lr"):  # a callback switched off
            params[key] = "false"
        else:
            params[key] = value
    params["augmentation"] = str(config.augmentation.enabled).lower()
    return params


@contextmanager
def tracked_run(
    experiment: str,
    run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or re-enter) a run that always ends FINISHED, FAILED or KILLED (Ctrl-C, SIGTERM).

    Inside an active run the new one is its child, in the same experiment. Under `mlflow run`, the
    launcher's run already holds the MLproject parameters as typed ('' for "from the config") and
    MLflow forbids changing a param, so our run becomes the launcher's child.
    """
    if MLFLOW_RUN_ID.get() and mlflow.active_run() is None:
        mlflow.start_run()  # the launcher: takes MLFLOW_RUN_ID and clears it for our run
        with _ending(), tracked_run(experiment, run_id, run_name, tags) as run:
            yield run
        return
    parent = mlflow.active_run()
    if parent is not None:
        experiment_id = parent.info.experiment_id
    else:
        experiment_id = mlflow.set_experiment(experiment).experiment_id
    run = mlflow.start_run(
        run_id=run_id,
        experiment_id=experiment_id,
        run_name=run_name,
        nested=parent is not None,
        tags=tags,
    )
    with _ending():
        yield run


@contextmanager
def _ending() -> Iterator[None]:
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
        tags["git_commit"] = commit
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
        mlflow.log_input(dataset, context=context)


class EpochMetricsLogger(keras.callbacks.Callback):
    """Logs loss, accuracy, val_loss, val_accuracy, learning_rate and epoch_seconds, step = epoch
    (counted from `first_step`: a training that continues an earlier one goes on numbering)."""

    def __init__(self, first_step: int = 0) -> None:
        super().__init__()
        self.first_step = first_step

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = {key: float(value) for key, value in (logs or {}).items()}
        values["learning_rate"] = float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        )
        values["epoch_seconds"] = time.perf_counter() - self._epoch_started
        mlflow.log_metrics(values, step=self.first_step + epoch)


def log_test_results(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray
) -> dict[str, float]:
    """Test metrics plus the confusion matrix, classification report and misclassified grid."""
    predicted = probabilities.argmax(axis=1)
    metrics = reports.test_metrics(labels, probabilities)
    mlflow.log_metrics(metrics)
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
    return metrics


def logged_history(run_id: str, keys: tuple[str, ...] = CURVE_METRICS) -> dict[str, list[float]]:
    """Per-epoch values as MLflow holds them: complete even when the run was resumed."""
    client = mlflow.MlflowClient()
    return {
        key: [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
        for key in keys
    }


def log_training_summary(model: keras.Model, run_id: str, seconds: float) -> None:
    """train_seconds, training_curves.png and model_summary.txt."""
    mlflow.log_metric("train_seconds", seconds)
    mlflow.log_figure(reports.training_curves_figure(logged_history(run_id)), "training_curves.png")
    reports.close_figures()
    summary: list[str] = []
    model.summary(print_fn=lambda line, **_: summary.append(line))
    mlflow.log_text("\n".join(summary), "model_summary.txt")


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
    loadable where digitml is not installed."""
    model = uncompiled(model)
    example_probabilities = np.asarray(model.predict_on_batch(example_images))
    mlflow.keras.log_model(
        model,
        name=KERAS_MODEL_NAME,
        signature=infer_signature(example_images, example_probabilities),
        pip_requirements=pinned_requirements(KERAS_MODEL_DISTRIBUTIONS),
    )
    keras_file = work_dir / "digit_model.keras"
    model.save(keras_file)
    mlflow.pyfunc.log_model(
        name=PYFUNC_MODEL_NAME,
        python_model=str(PYFUNC_CODE),
        artifacts={"keras_model": str(keras_file), "imaging": str(IMAGING_CODE)},
        pip_requirements=pinned_requirements(SERVED_DISTRIBUTIONS),
        # No signature on purpose: MLflow's schema check would silently drop unknown columns,
        # and every input error must reach DigitClassifier.predict to get its own message.
    )


def _child_runs(parent_run_id: str, extra_filter: str = "") -> list[mlflow.entities.Run]:
    parent = mlflow.get_run(parent_run_id)
    query = f"tags.mlflow.parentRunId = '{parent_run_id}'" + (
        f" and {extra_filter}" if extra_filter else ""
    )
    return mlflow.search_runs(
        [parent.info.experiment_id], filter_string=query, output_format="list"
    )


@contextmanager
def search_run(config: Any, parent_file: Path) -> Iterator[mlflow.ActiveRun]:
    """The search's parent run: the one recorded in `parent_file` if it exists, else a new one."""
    saved = parent_file.read_text().strip() if parent_file.is_file() else None
    if saved:
        with tracked_run(config.experiment, run_id=saved) as run:
            yield run
        return
    with tracked_run(
        config.experiment, run_name=f"search {config.name}", tags={"digitml.kind": "tune"}
    ) as run:
        parent_file.write_text(run.info.run_id)
        settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "search_space"}
        mlflow.log_params({**settings, "search_space": json.dumps(config.search_space)})
        mlflow.log_text(config.to_yaml(), "tune.yaml")
        yield run


def run_exists(run_id: str) -> bool:
    try:
        return mlflow.get_run(run_id).info.lifecycle_stage == "active"
    except mlflow.exceptions.MlflowException:
        return False


@contextmanager
def trial_run(
    parent_run_id: str, experiment_id: str, trial_id: str, values: dict[str, Any]
) -> Iterator[mlflow.ActiveRun]:
    """A trial's child run; a trial re-run after a crash re-enters its run instead of adding one."""
    existing = _child_runs(parent_run_id, f"tags.`digitml.trial_id` = '{trial_id}'")
    if existing:
        run_id = existing[0].info.run_id
    else:
        run_id = (
            mlflow.MlflowClient()
            .create_run(
                experiment_id,
                run_name=f"trial {trial_id}",
                tags={
                    "mlflow.parentRunId": parent_run_id,
                    "digitml.kind": "trial",
                    "digitml.trial_id": trial_id,
                },
            )
            .info.run_id
        )
    run = mlflow.start_run(run_id=run_id, nested=True)
    with _ending():
        mlflow.log_params({name.replace("tuner/", "tuner."): v for name, v in values.items()})
        yield run


def trial_seconds(parent_run_id: str) -> dict[str, float]:
    """trial id -> training seconds, from the trials' child runs."""
    return {
        run.data.tags["digitml.trial_id"]: run.data.metrics.get("trial_seconds", float("nan"))
        for run in _child_runs(parent_run_id, "tags.`digitml.kind` = 'trial'")
    }


def log_search_summary(trials: list[Any], parent_run_id: str) -> None:
    """best_val_accuracy, best_* params, trials.csv and a figure comparing the trials."""
    seconds = trial_seconds(parent_run_id)
    rows = [
        {
            "trial_id": trial.trial_id,
            **{k: v for k, v in trial.hyperparameters.values.items()},
            "score": trial.score,
            "status": trial.status,
            "seconds": seconds.get(trial.trial_id),
        }
        for trial in sorted(trials, key=lambda trial: trial.trial_id)
    ]
    mlflow.log_text(pd.DataFrame(rows).to_csv(index=False), "trials.csv")
    mlflow.log_figure(reports.trials_figure(rows), "trials.png")
    reports.close_figures()
    scored = [trial for trial in trials if trial.score is not None and trial.status == "COMPLETED"]
    if scored:
        best = max(scored, key=lambda trial: trial.score)
        mlflow.log_metric("best_val_accuracy", best.score)
        mlflow.log_params(
            {
                f"best_{k}": v
                for k, v in best.hyperparameters.values.items()
                if not k.startswith("tuner/")
            }
        )


def finished_best_run(parent_run_id: str) -> str | None:
    """The best configuration's finished training run under this search, if there is one."""
    runs = _child_runs(
        parent_run_id, "tags.`digitml.kind` = 'best' and attributes.status = 'FINISHED'"
    )
    return runs[0].info.run_id if runs else None


def running_search(experiment: str, oracle_address: str, wait_seconds: float) -> Any:
    """The RUNNING search whose chief serves `oracle_address`, waiting a little for it to start."""
    deadline = time.monotonic() + wait_seconds
    query = f"tags.`digitml.kind` = 'tune' and tags.`{ORACLE_TAG}` = '{oracle_address}' and attributes.status = 'RUNNING'"
    while True:
        found = mlflow.get_experiment_by_name(experiment)
        runs = (
            mlflow.search_runs([found.experiment_id], filter_string=query, output_format="list")
            if found
            else []
        )
        if runs:
            return runs[0]
        if time.monotonic() > deadline:
            return None
        time.sleep(1)


def log_static_evaluation(labels: np.ndarray, predicted: np.ndarray) -> None:
    """MLflow's own classifier evaluation of fixed predictions (its metrics beside ours)."""
    frame = pd.DataFrame({"label": labels, "prediction": predicted})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.models.evaluate(
            data=frame,
            targets="label",
            predictions="prediction",
            model_type="classifier",
            evaluator_config={"log_model_explainability": False},
        )
