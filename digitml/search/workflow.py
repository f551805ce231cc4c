"""A whole search: the trials under one parent run, then the best configuration retrained,
tested and registered as the `challenger`. One call per process, whatever its role."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import mlflow

from digitml import registry
from digitml.config import TrainConfig, TuneConfig, load_config, with_overrides
from digitml.data import DigitData, Splits, load_dataset, make_splits
from digitml.search import runs
from digitml.search.distributed import (
    Role,
    chief_reachable,
    join_search,
    serve_oracle,
    tuning_folder,
)
from digitml.search.space import best_recipe, check_search
from digitml.search.tuner import DigitTuner, SearchContext, SearchEnded, TuningStateError
from digitml.training_run import run_training

PARENT_RUN_FILE = "mlflow_parent_run_id"


@dataclass
class SearchOutcome:
    parent_run_id: str
    best_run_id: str | None
    best_val_accuracy: float | None
    model_version: str | None


def run_search(config: TuneConfig, role: Role | None = None) -> SearchOutcome:
    """Search, record it under one parent run, then retrain, test and register the best.

    A search in this process alone (`role` None), the chief of a distributed search (it serves the oracle,
    records and finishes the search) or a worker (it only runs trials; see `run_worker`).
    """
    role = role or Role()
    base = base_recipe(config)
    check_search(config, base)  # every trial and its retraining valid, before anything is recorded
    join_search(role)
    folder = tuning_folder(config.experiment, role, config.tuning_dir)
    data = load_dataset(config.dataset, config.data_dir)
    splits = make_splits(data, base.val_fraction, base.seed, base.limit)
    if role.is_worker:
        return run_worker(config, base, splits, folder, role)
    return run_chief(config, base, data, splits, folder, role)


def run_chief(
    config: TuneConfig, base: TrainConfig, data: DigitData, splits: Splits, folder: Path, role: Role
) -> SearchOutcome:
    """The search's own process: its parent run, the trials (run here, or by workers while this
    process serves the oracle), the summary, the best configuration's retraining."""
    folder.mkdir(parents=True, exist_ok=True)
    parent_file = folder / PARENT_RUN_FILE
    if parent_file.is_file():
        check_resumable(parent_file.read_text().strip(), config, folder)
    with runs.search_run(config, parent_file) as parent:
        if role.is_chief:
            mlflow.set_tag(runs.ORACLE_TAG, role.oracle_address)
        context = SearchContext(
            config, base, splits, parent.info.run_id, parent.info.experiment_id, time.monotonic()
        )
        tuner = DigitTuner(context, folder)
        if role.is_chief:
            serve_oracle(tuner, role.oracle_address)
        else:
            tuner.search(verbose=0)
        runs.log_search_summary(list(tuner.oracle.trials.values()), parent.info.run_id)
        best = tuner.oracle.get_best_trials(1)
        if not best:
            return SearchOutcome(parent.info.run_id, None, None, None)
        best_run = runs.best_run(parent.info.run_id)
        if best_run is not None and best_run.info.status == "FINISHED":
            best_run_id = best_run.info.run_id
        else:  # a retraining a kill interrupted goes on in its own run, from its last epoch
            best_run_id = run_training(
                best_recipe(config, base, best[0].hyperparameters.values),
                data=data,
                resume_run_id=best_run.info.run_id if best_run else None,
                kind="best",
                run_name=f"best-{runs.trial_run_name(best[0].trial_id)}",
            ).run_id
        # Said before registering: if the registry fails, the user knows which run to register.
        print(f"registering run {best_run_id} as '{config.register_as}'", flush=True)
        version = registry.register_challenger(best_run_id, config.register_as)
    return SearchOutcome(parent.info.run_id, best_run_id, best[0].score, version)


def check_resumable(run_id: str, config: TuneConfig, folder: Path) -> None:
    """Raise TuningStateError unless the search `folder` holds (its run `run_id`) can go on with
    `config`: its run is in this store, and its trials are the ones `config` asks for (its
    params, which MLflow keeps unchanged, and the oracle's state hold the space it started with).
    A changed search is refused, not restarted: its trials are not lost by a re-run."""
    if not runs.run_exists(run_id):
        raise TuningStateError(
            f"{folder} holds a search whose MLflow run {run_id} is not in "
            f"{mlflow.get_tracking_uri()}: pass another --tuning-dir, or delete it to start over"
        )
    changed = runs.changed_setting(run_id, config)
    if changed is not None:
        raise TuningStateError(
            f"{folder} holds search run {run_id}, started with another {changed}: restore it to "
            "resume that search, or start a new one with another --tuning-dir (or delete "
            f"{folder})"
        )


def base_recipe(config: TuneConfig) -> TrainConfig:
    """The recipe every trial starts from: `base_config` with the search's settings and its
    `base_overrides`, named after the search (what its trials and the best retraining train is
    the search's, not the base file's)."""
    base = load_config(
        config.base_config,
        {
            "name": config.name,
            "dataset": config.dataset,
            "data_dir": config.data_dir,
            "limit": config.limit,
            "seed": config.seed,
            "experiment": config.experiment,
        },
    )
    return with_overrides(base, config.base_overrides, "base_overrides")


def run_worker(
    config: TuneConfig, base: TrainConfig, splits: Splits, folder: Path, role: Role
) -> SearchOutcome:
    """Run trials handed out by the chief until it says stop; raise SearchEnded if there is none
    (waiting `role.chief_wait_seconds` for it to start)."""
    oracle_address = role.oracle_address
    parent = runs.running_search(config.experiment, oracle_address, role.chief_wait_seconds)
    if parent is None or not chief_reachable(oracle_address):
        raise SearchEnded(
            f"no search is running at {oracle_address} (experiment '{config.experiment}')"
        )
    context = SearchContext(
        config,
        base,
        splits,
        parent.info.run_id,
        parent.info.experiment_id,
        time.monotonic(),
        oracle_address,
    )
    folder.mkdir(parents=True, exist_ok=True)
    tuner = DigitTuner(context, folder)
    import grpc

    try:
        tuner.search(verbose=0)
    except grpc.RpcError as error:
        raise SearchEnded(f"lost the chief at {oracle_address}: the search has ended") from error
    return SearchOutcome(parent.info.run_id, None, None, None)
