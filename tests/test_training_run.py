"""Which runs `digitml train --resume` continues, and with what config (the resumed training
itself, killed and continued in real processes, is in test_cli.py)."""

import re

import mlflow
import pytest

from digitml import tracking
from digitml.config import load_config
from digitml.training_run import ResumeError, resumable_config


def started_run(config, status: str) -> str:
    """A run that recorded `config` as training runs do, then ended with `status`."""
    with mlflow.start_run(experiment_id=mlflow.set_experiment("resume").experiment_id) as run:
        mlflow.log_text(config.to_yaml(), tracking.CONFIG_ARTIFACT)
    mlflow.MlflowClient().set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def test_an_interrupted_run_resumes_with_its_own_config_and_the_data_dir_given(
    tracking_uri, tmp_path
):
    config = load_config("fast", {"epochs": 3, "seed": 5})
    run_id = started_run(config, "KILLED")
    resumed = resumable_config(run_id, data_dir=str(tmp_path))
    assert resumed.data_dir == str(tmp_path)
    assert (resumed.model, resumed.epochs, resumed.seed) == (config.model, 3, 5)


def test_a_finished_run_is_not_resumed(tracking_uri):
    run_id = started_run(load_config("fast", {}), "FINISHED")
    with pytest.raises(ResumeError, match=f"run {run_id} already finished"):
        resumable_config(run_id)


def test_an_unknown_run_is_named_with_the_store_searched(tracking_uri):
    with pytest.raises(ResumeError, match=re.escape(f"run 0123abcd not found in {tracking_uri}")):
        resumable_config("0123abcd")
