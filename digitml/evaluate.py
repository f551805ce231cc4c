"""Score any logged or registered digit model on a full test set, as its own MLflow run."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from digitml import tracking
from digitml.config import DEFAULT_DATASET, DEFAULT_EXPERIMENT
from digitml.data import load_dataset
from digitml.train import in_batches


@dataclass
class Evaluation:
    run_id: str
    model_uri: str
    metrics: dict[str, float]


def model_probabilities(model: mlflow.pyfunc.PyFuncModel, images: np.ndarray) -> np.ndarray:
    """The pyfunc's class probabilities for (n, 28, 28, 1) images, sent as `pixels` rows."""

    def predict(batch: np.ndarray) -> np.ndarray:
        rows = pd.DataFrame({"pixels": list(batch[..., 0])})
        return np.array(model.predict(rows)["probabilities"].tolist())

    return in_batches(predict, images)


def scoring_data(
    model_uri: str, dataset: str | None = None, data_dir: str | None = None
) -> tuple[str, str | None]:
    """The dataset and data folder to score the model on: as given, else the dataset its own run
    trained and tested it on, with that run's data folder if it is one on this machine; MNIST
    where the run is not in this store (a model copied in)."""
    if dataset is not None:
        return dataset, data_dir
    try:
        params = mlflow.get_run(mlflow.models.get_model_info(model_uri).run_id).data.params
    except (mlflow.exceptions.MlflowException, TypeError):
        return DEFAULT_DATASET, data_dir
    trained_dir = params.get("data_dir")
    here = trained_dir if trained_dir and Path(trained_dir).is_dir() else None
    return params.get("dataset", DEFAULT_DATASET), data_dir or here


def evaluate_model(
    model_uri: str,
    dataset: str | None = None,
    data_dir: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> Evaluation:
    """Test metrics and report artifacts of `model_uri` (runs:/…, models:/name@alias, models:/name/3)
    on `dataset`, by default the one the model was trained on."""
    dataset, data_dir = scoring_data(model_uri, dataset, data_dir)
    model = mlflow.pyfunc.load_model(model_uri)
    data = load_dataset(dataset, data_dir)
    probabilities = model_probabilities(model, data.test_images)
    tags = {"digitml.kind": "evaluate", "source_model_uri": model_uri}
    with tracking.tracked_run(experiment, run_name=f"evaluate {model_uri}", tags=tags) as run:
        mlflow.log_params(
            {"model_uri": model_uri, "dataset": dataset, "test_size": len(data.test_labels)}
        )
        tracking.log_dataset_parts(
            data.name, data.source, {"test": (data.test_images, data.test_labels)}
        )
        # MLflow's evaluation first: it writes its own confusion_matrix.png, which ours replaces.
        log_static_evaluation(data.test_labels, probabilities.argmax(axis=1))
        metrics = tracking.log_test_results(data.test_images, data.test_labels, probabilities)
    return Evaluation(run.info.run_id, model_uri, metrics)


def log_static_evaluation(labels: np.ndarray, predicted: np.ndarray) -> None:
    """MLflow's own classifier evaluation of fixed predictions (its metrics beside ours)."""
    # Digits as text: MLflow takes integer labels for a regression's ("the model type looks like
    # None") and classes given as text for a classifier's.
    frame = pd.DataFrame({"label": labels.astype(str), "prediction": predicted.astype(str)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.models.evaluate(
            data=frame,
            targets="label",
            predictions="prediction",
            model_type="classifier",
            evaluator_config={"log_model_explainability": False},
        )
