"""Score any logged or registered digit model on a full test set, as its own MLflow run."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd

from digitml import tracking
from digitml.data import load_dataset

SCORING_BATCH = 2_000


@dataclass
class Evaluation:
    run_id: str
    model_uri: str
    metrics: dict[str, float]


def model_probabilities(model: mlflow.pyfunc.PyFuncModel, images: np.ndarray) -> np.ndarray:
    """The pyfunc's class probabilities for (n, 28, 28, 1) images, sent as `pixels` rows."""
    chunks = []
    for start in range(0, len(images), SCORING_BATCH):
        rows = pd.DataFrame({"pixels": list(images[start : start + SCORING_BATCH, ..., 0])})
        chunks.append(np.array(model.predict(rows)["probabilities"].tolist()))
    return np.concatenate(chunks)


def evaluate_model(
    model_uri: str, dataset: str = "mnist", data_dir: str | None = None, experiment: str = "digitml"
) -> Evaluation:
    """Test metrics and report artifacts of `model_uri` (runs:/…, models:/name@alias, models:/name/3)."""
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
        metrics = tracking.log_test_results(data.test_images, data.test_labels, probabilities)
        tracking.log_static_evaluation(data.test_labels, probabilities.argmax(axis=1))
    return Evaluation(run.info.run_id, model_uri, metrics)
