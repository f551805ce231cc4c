"""Model registry: register a run's pyfunc model and point aliases at versions."""

from __future__ import annotations

import mlflow

from digitml.tracking import PYFUNC_MODEL_NAME

CHALLENGER = "challenger"


def register_challenger(run_id: str, name: str) -> str:
    """Register the run's `model` as a version of `name` (once) and alias it `challenger`."""
    client = mlflow.MlflowClient()
    existing = [
        version
        for version in client.search_model_versions(f"name = '{name}'")
        if version.run_id == run_id
    ]
    if existing:
        version = existing[0].version
    else:
        version = mlflow.register_model(f"runs:/{run_id}/{PYFUNC_MODEL_NAME}", name).version
    client.set_registered_model_alias(name, CHALLENGER, version)
    return str(version)
