"""Keras Tuner glue: search space from YAML, one nested MLflow run per trial, resume, best model.

Keras Tuner decides *what to try* (its Oracle); digitml's own training loop (`train.train_model`)
runs each trial, so a trial is trained, logged and checkpointed exactly like `digitml train`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import mlflow
import numpy as np
from keras_tuner.src import errors as kt_errors
from keras_tuner.src import utils as kt_utils

from digitml import registry, tracking
from digitml.config import TrainConfig, TuneConfig, config_from_dict, load_config
from digitml.data import DigitData, Splits, load_dataset, make_splits
from digitml.experiment import run_training
from digitml.train import train_model

OBJECTIVE = "val_accuracy"
PROJECT_NAME = "search"
PARENT_RUN_FILE = "mlflow_parent_run_id"
ENDED_STATUSES = ("COMPLETED", "FAILED", "INVALID")
TRIAL_WEIGHTS = "weights.weights.h5"  # a trial's network at its last epoch
CHIEF_TIMEOUT_SECONDS = 20
WORKER_WAIT_SECONDS = 15


def search_space(space: dict[str, dict[str, Any]]) -> kt.HyperParameters:
    """The YAML search space as Keras Tuner hyperparameters."""
    hp = kt.HyperParameters()
    for name, spec in space.items():
        kind = spec["type"]
        if kind in ("int", "float"):
            define = hp.Int if kind == "int" else hp.Float
            define(
                name,
                spec["min"],
                spec["max"],
                step=spec.get("step"),
                sampling=spec.get("sampling", "linear"),
            )
        elif kind == "choice":
            hp.Choice(name, spec["values"])
        else:
            hp.Boolean(name)
    return hp


def trial_config(base: TrainConfig, values: dict[str, Any], epochs: int) -> TrainConfig:
    """The base recipe with a trial's values: config fields by name, `section.key` nested, the
    rest as model_params."""
    raw = dataclasses.asdict(base)
    raw["epochs"] = epochs
    raw["model_params"] = dict(raw["model_params"])
    for name, value in values.items():
        if name.startswith("tuner/"):
            continue
        section, _, key = name.partition(".")
        if key and isinstance(raw.get(section), dict):
            raw[section][key] = value
        elif name in raw and name != "model_params":
            raw[name] = value
        else:
            raw["model_params"][name] = value
    return config_from_dict(raw, source="trial")


def save_json_atomically(path: str, state: Any) -> str:
    """keras-tuner's `save_json`, written beside the file and renamed over it.

    keras-tuner truncates its oracle, trial and tuner JSON files before writing them, so a search
    killed at that instant left an empty file and could not be resumed. A rename is atomic: a kill
    leaves the previous state or the new one, never half of either.
    """
    text = json.dumps(state)
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(partial, path)
    return text


kt_utils.save_json = save_json_atomically  # every Stateful.save (oracle, trials, tuner) calls it


def make_oracle(config: TuneConfig) -> kt.Oracle:
    common = {
        "objective": kt.Objective(OBJECTIVE, "max"),
        "hyperparameters": search_space(config.search_space),
        "tune_new_entries": False,
        "seed": config.seed,
        # A failing trial is recorded and the search goes on, however many fail in a row.
        "max_consecutive_failed_trials": config.max_trials + 1,
    }
    if config.tuner == "hyperband":
        # Brackets repeat until max_trials is reached (Hyperband has no trial budget of its own).
        oracle = kt.oracles.HyperbandOracle(
            max_epochs=config.epochs,
            factor=config.hyperband_factor,
            hyperband_iterations=None,
            **common,
        )
        oracle.max_trials = config.max_trials
        return oracle
    if config.tuner == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=config.max_trials, **common)
    return kt.oracles.RandomSearchOracle(max_trials=config.max_trials, **common)


@dataclass
class SearchContext:
    tune: TuneConfig
    base: TrainConfig
    splits: Splits
    parent_run_id: str
    experiment_id: str
    started: float
    oracle_address: str | None = None  # set on workers of a distributed search
    # Trials that had ended before this process started (a resumed search): the time left is
    # estimated from the pace of this process's own trials.
    ended_at_start: int = 0


class TuningStateError(RuntimeError):
    """The tuning folder belongs to a search this tracking store does not hold."""


class SearchEnded(RuntimeError):
    """A worker found no running search (it ended, or the chief is gone): a clean exit."""


class DigitTuner(kt.engine.base_tuner.BaseTuner):
    """Runs each trial with digitml's training loop inside its own child MLflow run."""

    def __init__(self, context: SearchContext, directory: Path, **kwargs: Any) -> None:
        self.context = context
        super().__init__(
            oracle=make_oracle(context.tune),
            hypermodel=None,
            directory=str(directory),
            project_name=PROJECT_NAME,
            overwrite=False,
            **kwargs,
        )
        # A worker sees the oracle only through the chief. Keras Tuner reloads the trials in the
        # order a glob lists their folders; in creation order (ids are zero-padded), a tie for the
        # best score goes to the same trial as before the restart, whose params MLflow holds.
        if context.oracle_address is None:
            self.oracle.trials = dict(sorted(self.oracle.trials.items()))
            retry_unfinished_trials(self.oracle)
            context.ended_at_start = ended_trials(self.oracle)

    def run_trial(self, trial: kt.engine.trial.Trial, **_: Any) -> dict[str, float]:
        values = trial.hyperparameters.values
        epochs = values.get("tuner/epochs", self.context.tune.epochs)
        start_weights = self.previous_round_weights(values)
        first_epoch = values["tuner/initial_epoch"] if start_weights else 0
        config = trial_config(self.context.base, values, epochs - first_epoch)
        callbacks = [
            tracking.EpochMetricsLogger(first_step=first_epoch),
            keras.callbacks.ModelCheckpoint(
                str(self.weights_file(trial.trial_id)), save_weights_only=True
            ),
        ]
        with tracking.trial_run(
            self.context.parent_run_id, self.context.experiment_id, trial.trial_id, values
        ):
            try:
                result = train_model(
                    config,
                    self.context.splits,
                    callbacks,
                    backup_dir=Path(self.get_trial_dir(trial.trial_id)) / "backup",
                    progress="none",
                    initial_weights=start_weights,
                )
            except Exception as error:  # any training failure fails the trial, not the search
                raise kt_errors.FailedTrialError(f"{type(error).__name__}: {error}") from error
            score = max(result.history[OBJECTIVE])
            if not np.isfinite(result.history["loss"][-1]) or not np.isfinite(score):
                raise kt_errors.FailedTrialError("the loss became NaN or infinite")
            mlflow.log_metric("trial_seconds", result.train_seconds)
        return {OBJECTIVE: score}

    def weights_file(self, trial_id: str) -> Path:
        return Path(self.get_trial_dir(trial_id)) / TRIAL_WEIGHTS

    def previous_round_weights(self, values: dict[str, Any]) -> Path | None:
        """The weights a Hyperband trial continues from: those its trial of the previous round
        ended with (Hyperband's `tuner/trial_id`), so a round trains only its extra epochs.

        None for a first-round trial, with `hyperband_continue: false`, and where that file is not
        on this machine (a worker of a distributed search that did not run the earlier round):
        such a trial trains from scratch.
        """
        previous = values.get("tuner/trial_id")
        if previous is None or not self.context.tune.hyperband_continue:
            return None
        path = self.weights_file(previous)
        return path if path.is_file() else None

    def pre_create_trial(self) -> None:
        """On a worker, stop cleanly when the chief is gone instead of waiting an hour in gRPC."""
        address = self.context.oracle_address
        if address and not chief_reachable(address):
            raise SearchEnded(f"the chief at {address} is gone: the search has ended")

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_end(trial)
        print(progress_line(self.oracle, trial, self.context), flush=True)


def reload_tuner(context: SearchContext, tuning_dir: Path) -> DigitTuner:
    """The tuner, with the state of the search already in `tuning_dir` when there is one."""
    try:
        return DigitTuner(context, tuning_dir)
    except json.JSONDecodeError as error:  # written by a version before save_json_atomically
        raise TuningStateError(
            f"{tuning_dir} holds a search state file that is cut short ({error}): delete "
            f"{tuning_dir} to start the search over"
        ) from error


def chief_reachable(address: str, timeout: float = CHIEF_TIMEOUT_SECONDS) -> bool:
    import grpc

    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def serve_oracle(tuner: DigitTuner, address: str) -> None:
    """The chief's part of a distributed search: serve the oracle to the workers on `address`
    until every trial has been handed out and every worker has left.

    keras-tuner's own loop (`oracle_chief.start_server`, which `search` runs on a chief) checks
    that only every 20 s once the last trial is handed out, so the chief outlived its search by
    up to 20 s; this one checks every second."""
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    tuner.oracle.verbose = 0
    tuner.save()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(tuner.oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    server.add_insecure_port(address)
    server.start()
    print(f"oracle listening on {address}; start workers with --role worker", flush=True)
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(tuner.oracle)):
            time.sleep(1)
    finally:
        server.stop(grace=None)


def progress_line(oracle: kt.Oracle, trial: kt.engine.trial.Trial, context: SearchContext) -> str:
    """`trial k/N  hp=…  score  best  elapsed  left` for one finished trial.

    A worker sees the search only through the chief: it asks for the trial's score by id
    and prints its own trials' ids instead of the overall count.
    """
    total = context.tune.max_trials
    best = oracle.get_best_trials(1)
    best_score = f"{best[0].score:.4f}" if best and best[0].score is not None else "-"
    elapsed = time.monotonic() - context.started
    if context.oracle_address:
        counter, left = f"trial {trial.trial_id} of {total}", ""
    else:
        done = ended_trials(oracle)
        epochs = trial_epochs(oracle, context.tune)
        remaining = seconds_left(elapsed, epochs, context.ended_at_start, done)
        counter, left = f"trial {done}/{total}", f"  left ~{_clock(remaining)}"
    trial = oracle.get_trial(trial.trial_id)
    values = " ".join(
        f"{name}={_short(value)}"
        for name, value in trial.hyperparameters.values.items()
        if not name.startswith("tuner/")
    )
    score = f"{trial.score:.4f}" if trial.score is not None else trial.status.lower()
    return (
        f"{counter}  {values}  {OBJECTIVE} {score}  best {best_score}  "
        f"elapsed {_clock(elapsed)}{left}"
    )


def retry_unfinished_trials(oracle: kt.Oracle) -> None:
    """Make the reloaded oracle's retry queue agree with the trials' own files.

    keras-tuner writes a trial's file, then the oracle's state, and on reload re-runs the trials
    that state lists as ongoing or queued. A kill between the two writes leaves them disagreeing:
    a new trial saved as running but not listed would never run (the search would end a trial
    short), and an ended trial still listed would train again."""
    statuses = {trial.trial_id: trial.status for trial in oracle.trials.values()}
    ended = (kt.engine.trial.TrialStatus.COMPLETED, kt.engine.trial.TrialStatus.FAILED)
    queue = [trial_id for trial_id in oracle._retry_queue if statuses.get(trial_id) not in ended]
    orphans = [
        trial_id
        for trial_id, status in statuses.items()
        if status == kt.engine.trial.TrialStatus.RUNNING and trial_id not in queue
    ]
    oracle._retry_queue = queue + sorted(orphans, reverse=True)  # popped from the end


def ended_trials(oracle: kt.Oracle) -> int:
    return sum(1 for trial in oracle.trials.values() if trial.status in ENDED_STATUSES)


def seconds_left(elapsed: float, epochs: list[int], ended_at_start: int, ended: int) -> float:
    """This process's seconds per epoch so far times the epochs of the trials still to run."""
    seconds_per_epoch = elapsed / max(sum(epochs[ended_at_start:ended]), 1)
    return seconds_per_epoch * sum(epochs[ended:])


def trial_epochs(oracle: kt.Oracle, config: TuneConfig) -> list[int]:
    """The epochs each of the search's trials trains, in the order they run: what the time left
    is estimated from. Hyperband's later rounds train longer: its brackets, from the most
    aggressive, and their rounds (sizes and epochs from the oracle's own schedule), where a
    continuing trial trains only its extra epochs."""
    if not isinstance(oracle, kt.oracles.HyperbandOracle):
        return [config.epochs] * config.max_trials
    epochs: list[int] = []
    while len(epochs) < config.max_trials:
        for bracket in reversed(range(oracle._get_num_brackets())):
            trained = 0
            for round_num in range(oracle._get_num_rounds(bracket)):
                round_epochs = oracle._get_epochs(bracket, round_num)
                epochs += [round_epochs - trained] * oracle._get_size(bracket, round_num)
                trained = round_epochs if config.hyperband_continue else 0
    return epochs[: config.max_trials]


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


@dataclass
class SearchOutcome:
    parent_run_id: str
    best_run_id: str | None
    best_val_accuracy: float | None
    model_version: str | None


def run_search(
    config: TuneConfig, tuning_dir: Path, role: str | None = None, oracle_address: str | None = None
) -> SearchOutcome:
    """Search, record it under one parent run, then retrain, test and register the best.

    `role` is None for a search on one machine, "chief" for the oracle of a distributed search
    (it records and finishes the search) or "worker" (it only runs trials; see `run_worker`).
    """
    base, data, splits = _prepare(config)
    if role == "worker":
        return run_worker(config, base, splits, tuning_dir, oracle_address)
    tuning_dir.mkdir(parents=True, exist_ok=True)
    parent_file = tuning_dir / PARENT_RUN_FILE
    if parent_file.is_file() and not tracking.run_exists(parent_file.read_text().strip()):
        raise TuningStateError(
            f"{tuning_dir} holds a search whose MLflow run {parent_file.read_text().strip()} is not "
            f"in {mlflow.get_tracking_uri()}: pass another --tuning-dir, or delete it to start over"
        )
    with tracking.search_run(config, parent_file) as parent:
        if role == "chief":
            mlflow.set_tag(tracking.ORACLE_TAG, oracle_address)
        context = SearchContext(
            config, base, splits, parent.info.run_id, parent.info.experiment_id, time.monotonic()
        )
        tuner = reload_tuner(context, tuning_dir)
        if role == "chief":
            serve_oracle(tuner, oracle_address)
        else:
            tuner.search(verbose=0)
        trials = list(tuner.oracle.trials.values())
        tracking.log_search_summary(trials, parent.info.run_id)
        best = tuner.oracle.get_best_trials(1)
        if not best:
            return SearchOutcome(parent.info.run_id, None, None, None)
        best_config = trial_config(
            base, best[0].hyperparameters.values, config.best_epochs or base.epochs
        )
        best_run_id = tracking.finished_best_run(parent.info.run_id)
        if best_run_id is None:
            best_run_id = run_training(best_config, data=data, kind="best").run_id
        version = registry.register_challenger(best_run_id, config.register_as)
    return SearchOutcome(parent.info.run_id, best_run_id, best[0].score, version)


def _prepare(config: TuneConfig) -> tuple[TrainConfig, DigitData, Splits]:
    """The base recipe with the search's settings, its data and the seeded splits."""
    base = base_recipe(config)
    data = load_dataset(config.dataset, config.data_dir)
    return base, data, make_splits(data, base.val_fraction, base.seed, base.limit)


def base_recipe(config: TuneConfig) -> TrainConfig:
    """The recipe every trial starts from: `base_config` with the search's settings and its
    `base_overrides`."""
    base = load_config(
        config.base_config,
        {
            "dataset": config.dataset,
            "data_dir": config.data_dir,
            "limit": config.limit,
            "seed": config.seed,
            "experiment": config.experiment,
        },
    )
    # Applied on the resolved config, so `reduce_lr: null` switches a callback off.
    return config_from_dict(
        {**dataclasses.asdict(base), **config.base_overrides}, source="base_overrides"
    )


def run_worker(
    config: TuneConfig, base: TrainConfig, splits: Splits, tuning_dir: Path, oracle_address: str
) -> SearchOutcome:
    """Run trials handed out by the chief until it says stop; raise SearchEnded if there is none."""
    parent = tracking.running_search(config.experiment, oracle_address, WORKER_WAIT_SECONDS)
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
    tuning_dir.mkdir(parents=True, exist_ok=True)
    tuner = DigitTuner(context, tuning_dir)
    import grpc

    try:
        tuner.search(verbose=0)
    except grpc.RpcError as error:
        raise SearchEnded(f"lost the chief at {oracle_address}: the search has ended") from error
    return SearchOutcome(parent.info.run_id, None, None, None)
