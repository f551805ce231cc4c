"""How a trial is run: `DigitTuner`, a Keras Tuner tuner whose trials are digitml trainings, each
in its own child MLflow run, with the search's state saved so that a killed search resumes.

Keras Tuner decides *what to try* (the oracle made here from the search's settings); digitml's
own training loop (`train.train_model`) runs each trial, so a trial is trained, logged and
checkpointed exactly like `digitml train`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import mlflow
import numpy as np

from digitml import tracking
from digitml.config import TrainConfig, TuneConfig
from digitml.data import Splits
from digitml.errors import UserError
from digitml.search import hyperband
from digitml.search.distributed import chief_reachable
from digitml.search.progress import ended_trials, progress_line
from digitml.search.runs import OBJECTIVE, trial_run
from digitml.search.space import best_recipe, search_space, trial_config
from digitml.train import train_model

PROJECT_NAME = "search"
ORACLE_FILE = "oracle.json"  # the names Keras Tuner reloads the search's state from
TUNER_FILE = "{tuner_id}.json"
ENDED = (kt.engine.trial.TrialStatus.COMPLETED, kt.engine.trial.TrialStatus.FAILED)


class TuningStateError(UserError):
    """The tuning folder belongs to a search this tracking store does not hold, or is damaged."""


class SearchEnded(RuntimeError):
    """A worker found no running search (it ended, or the chief is gone): a clean exit."""


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


def write_json_atomically(path: str, state: Any) -> str:
    """Keras Tuner's state files, written beside the file and renamed over it.

    Keras Tuner truncates its oracle, trial and tuner JSON files before writing them, so a search
    killed at that instant left an empty file and could not be resumed. A rename is atomic: a kill
    leaves the previous state or the new one, never half of either.
    """
    text = json.dumps(state)
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(partial, path)
    return text


class AtomicTrial(kt.engine.trial.Trial):
    """A trial whose `trial.json` is written atomically."""

    def save(self, fname: str) -> str:
        return write_json_atomically(fname, self.get_state())


class AtomicTrials(dict):
    """The oracle's `trials`: a trial stored here saves atomically from then on. The oracle
    stores a new trial before it first saves it, and reloaded trials are stored here too."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__()
        for trial_id, trial in dict(items).items():
            self[trial_id] = trial

    def __setitem__(self, trial_id: str, trial: kt.engine.trial.Trial) -> None:
        if type(trial) is kt.engine.trial.Trial:
            trial.__class__ = AtomicTrial
        super().__setitem__(trial_id, trial)


class DurableOracle:
    """What digitml adds to each Keras Tuner oracle (a mixin, first among the bases): its state
    saved atomically, a reload that re-runs exactly the unfinished trials, and knowing when a
    distributed search has ended."""

    state_file: str | None = None  # set by the tuner, which knows the folder
    stop_given = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trials = AtomicTrials()

    def save(self) -> None:
        if self.state_file is None:
            super().save()
        else:
            write_json_atomically(self.state_file, self.get_state())

    def set_state(self, state: dict[str, Any]) -> None:
        """Reload in creation order, and re-run exactly the trials whose own files say they have
        not ended.

        Keras Tuner writes a trial's file, then the oracle's state, and on reload re-runs the
        trials that state lists as ongoing or queued. A kill between the two writes leaves them
        disagreeing: a new trial saved as running but not listed would never run (the search
        would end a trial short), and an ended trial still listed would train again. Creation
        order (ids are zero-padded) gives a tie for the best score to the same trial as before
        the restart, whose params MLflow holds; Keras Tuner lists the files in glob order.

        A trial to re-run starts with no metrics: one killed after reporting its score but before
        ending would keep that report (Keras Tuner takes a trial that has a score when its run
        returns for one that reported it itself, keeps the old, and warns)."""
        self.trials = AtomicTrials(sorted(self.trials.items()))
        statuses = {trial_id: trial.status for trial_id, trial in self.trials.items()}
        listed = [*state["retry_queue"], *state["ongoing_trials"].values()]
        queue = [trial_id for trial_id in listed if statuses.get(trial_id, ENDED[0]) not in ENDED]
        orphans = [
            trial_id
            for trial_id, status in statuses.items()
            if status == kt.engine.trial.TrialStatus.RUNNING and trial_id not in queue
        ]
        retry = queue + sorted(orphans, reverse=True)  # popped from the end
        for trial_id in retry:
            self.trials[trial_id].metrics.metrics.clear()
        super().set_state({**state, "ongoing_trials": {}, "retry_queue": retry})

    @kt.synchronized
    def create_trial(self, tuner_id: str) -> kt.engine.trial.Trial:
        trial = super().create_trial(tuner_id)
        if trial.status == kt.engine.trial.TrialStatus.STOPPED:
            self.stop_given = True
        return trial

    @kt.synchronized
    def search_done(self) -> bool:
        """Every trial handed out has ended and every worker has been told to stop."""
        return self.stop_given and not self.ongoing_trials and not self.tuner_ids


class HyperbandOracle(DurableOracle, kt.oracles.HyperbandOracle):
    pass


class BayesianOracle(DurableOracle, kt.oracles.BayesianOptimizationOracle):
    pass


class RandomOracle(DurableOracle, kt.oracles.RandomSearchOracle):
    pass


def make_oracle(config: TuneConfig) -> DurableOracle:
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
        oracle = HyperbandOracle(
            max_epochs=config.epochs,
            factor=config.hyperband_factor,
            hyperband_iterations=None,
            **common,
        )
        oracle.max_trials = config.max_trials
        return oracle
    if config.tuner == "bayesian":
        return BayesianOracle(max_trials=config.max_trials, **common)
    return RandomOracle(max_trials=config.max_trials, **common)


class DigitTuner(kt.engine.base_tuner.BaseTuner):
    """Runs each trial with digitml's training loop inside its own child MLflow run."""

    def __init__(self, context: SearchContext, directory: Path) -> None:
        self.context = context
        retraining = best_recipe(context.tune, context.base, {})
        # What the time left counts for the retraining: its epochs times its networks.
        self.retrain_epochs = retraining.epochs * len(retraining.architectures)
        try:
            super().__init__(
                oracle=make_oracle(context.tune),
                hypermodel=None,
                directory=str(directory),
                project_name=PROJECT_NAME,
                overwrite=False,
            )
        except json.JSONDecodeError as error:  # written by a version before atomic saving
            raise TuningStateError(
                f"{directory} holds a search state file that is cut short ({error}): delete "
                f"{directory} to start the search over"
            ) from error
        if context.oracle_address is None:  # a worker sees the oracle only through the chief
            self.oracle.state_file = os.path.join(self.project_dir, ORACLE_FILE)
            context.ended_at_start = ended_trials(self.oracle)

    def save(self) -> None:
        """BaseTuner.save, with the tuner's file written atomically too."""
        if self.context.oracle_address is None:
            self.oracle.save()
        path = os.path.join(self.project_dir, TUNER_FILE.format(tuner_id=self.tuner_id))
        write_json_atomically(path, self.get_state())

    def run_trial(self, trial: kt.engine.trial.Trial, **_: Any) -> dict[str, float]:
        values = trial.hyperparameters.values
        epochs = values.get("tuner/epochs", self.context.tune.epochs)
        start_weights = hyperband.previous_round_weights(
            values, self.get_trial_dir, self.context.tune.hyperband_continue
        )
        first_epoch = values["tuner/initial_epoch"] if start_weights else 0
        config = trial_config(self.context.base, values, epochs - first_epoch)
        callbacks = [
            tracking.EpochMetricsLogger(first_step=first_epoch),
            keras.callbacks.ModelCheckpoint(
                str(hyperband.weights_file(self.get_trial_dir(trial.trial_id))),
                save_weights_only=True,
            ),
        ]
        with trial_run(
            self.context.parent_run_id,
            self.context.experiment_id,
            trial.trial_id,
            values,
            self.tuner_id,
        ) as run:
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
                raise kt.errors.FailedTrialError(f"{type(error).__name__}: {error}") from error
            # The trial's epochs as its run holds them: all of them, when a resume continued it.
            history = tracking.logged_history(run.info.run_id, (OBJECTIVE, "loss"))
            score = max(history[OBJECTIVE])
            if not np.isfinite(history["loss"][-1]) or not np.isfinite(score):
                raise kt.errors.FailedTrialError("the loss became NaN or infinite")
            mlflow.log_metric("trial_seconds", result.train_seconds)
        return {OBJECTIVE: score}

    def pre_create_trial(self) -> None:
        """On a worker, stop cleanly when the chief is gone instead of waiting an hour in gRPC."""
        address = self.context.oracle_address
        if address and not chief_reachable(address):
            raise SearchEnded(f"the chief at {address} is gone: the search has ended")

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_end(trial)
        context = self.context
        line = progress_line(
            self.oracle,
            trial,
            context.tune,
            context.started,
            context.ended_at_start,
            on_worker=context.oracle_address is not None,
            retrain_epochs=self.retrain_epochs,
        )
        print(line, flush=True)
