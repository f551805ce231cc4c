"""The search's MLflow runs: one parent run per search, a child run per trial, the summary of
the trials on the parent, and the best configuration's retraining under it."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from digitml import reports
from digitml.config import TuneConfig
from digitml.search.space import TUNER_VALUE_PREFIX, searched
from digitml.tracking import ending, tracked_run

ORACLE_TAG = "digitml.oracle"
TUNER_TAG = "digitml.tuner_id"  # on each trial run: the process that ran it
OBJECTIVE = "val_accuracy"
SEARCH_SPACE_PARAM = "search_space"
# The settings that make the trials what they are, and the oracle's saved state with them: a
# search resumes only with the same. (More trials, another retraining or registered name may be
# asked for on a re-run.)
SAME_SEARCH_SETTINGS = (
    SEARCH_SPACE_PARAM,
    "tuner",
    "epochs",
    "hyperband_factor",
    "hyperband_continue",
    "base_config",
    "base_overrides",
    "dataset",
    "limit",
    "seed",
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
def search_run(config: TuneConfig, parent_file: Path) -> Iterator[mlflow.ActiveRun]:
    """The search's parent run: the one recorded in `parent_file` if it exists, else a new one."""
    saved = parent_file.read_text().strip() if parent_file.is_file() else None
    if saved:
        with tracked_run(config.experiment, run_id=saved) as run:
            yield run
        return
    name = config.name if config.name.startswith("tune") else f"tune-{config.name}"
    with tracked_run(config.experiment, run_name=name, tags={"digitml.kind": "tune"}) as run:
        parent_file.write_text(run.info.run_id)
        mlflow.log_params(search_params(config))
        mlflow.log_text(config.to_yaml(), "tune.yaml")
        yield run


def search_params(config: TuneConfig) -> dict[str, str]:
    """The search's settings as its run's params: the space as JSON, unset ones left out (no
    'None' param)."""
    settings = dataclasses.asdict(config)
    settings[SEARCH_SPACE_PARAM] = json.dumps(config.search_space)
    return {key: str(value) for key, value in settings.items() if value is not None}


def changed_setting(run_id: str, config: TuneConfig) -> str | None:
    """What differs, among SAME_SEARCH_SETTINGS, between the search run `run_id` was started with
    and `config` (`search_space.<name>` for a hyperparameter); None when nothing does."""
    logged = mlflow.get_run(run_id).data.params
    current = search_params(config)
    for key in SAME_SEARCH_SETTINGS:
        if logged.get(key) == current.get(key):
            continue
        if key != SEARCH_SPACE_PARAM or logged.get(key) is None:
            return f"{key} ({logged.get(key, 'unset')}, now {current.get(key, 'unset')})"
        before = json.loads(logged[key])
        names = [
            name
            for name in {**before, **config.search_space}
            if before.get(name) != config.search_space.get(name)
        ]
        return f"{key}.{names[0]}"
    return None


def run_exists(run_id: str) -> bool:
    try:
        return mlflow.get_run(run_id).info.lifecycle_stage == "active"
    except mlflow.exceptions.MlflowException:
        return False


@contextmanager
def trial_run(
    parent_run_id: str, experiment_id: str, trial_id: str, values: dict[str, Any], tuner_id: str
) -> Iterator[mlflow.ActiveRun]:
    """A trial's child run; a trial re-run after a crash re-enters its run instead of adding one.
    Tagged with the process that runs it (`tuner0` alone, the worker's id in a distributed
    search)."""
    existing = _child_runs(parent_run_id, f"tags.`digitml.trial_id` = '{trial_id}'")
    if existing:
        run = mlflow.start_run(run_id=existing[0].info.run_id, nested=True)
    else:
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=trial_run_name(trial_id),
            parent_run_id=parent_run_id,
            nested=True,
            tags={"digitml.kind": "trial", "digitml.trial_id": trial_id},
        )
    with ending():
        mlflow.set_tag(TUNER_TAG, tuner_id)
        mlflow.log_params(
            {name.replace(TUNER_VALUE_PREFIX, "tuner."): v for name, v in values.items()}
        )
        yield run


def trial_run_name(trial_id: str) -> str:
    """`trial-07` for Keras Tuner's trial "06": counted from 1, as the terminal counts."""
    return f"trial-{int(trial_id) + 1:02d}"


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
            **trial.hyperparameters.values,
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
        mlflow.log_metric(f"best_{OBJECTIVE}", best.score)
        mlflow.log_params(
            {f"best_{path}": value for path, value in searched(best.hyperparameters.values).items()}
        )


def best_run(parent_run_id: str) -> mlflow.entities.Run | None:
    """The best configuration's training run under this search (finished, or left unfinished by
    a killed process), if there is one."""
    runs = _child_runs(parent_run_id, "tags.`digitml.kind` = 'best'")
    return runs[0] if runs else None


def running_search(experiment: str, oracle_address: str, wait_seconds: float) -> Any:
    """The RUNNING search whose chief serves `oracle_address`, waiting a little for it to start."""
    deadline = time.monotonic() + wait_seconds
    query = (
        f"tags.`digitml.kind` = 'tune' and tags.`{ORACLE_TAG}` = '{oracle_address}' "
        "and attributes.status = 'RUNNING'"
    )
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
