"""The line printed after each trial: its values and score, the best so far, the time spent and
an estimate of the time left."""

from __future__ import annotations

import time
from typing import Any

import keras_tuner as kt

from digitml.config import TuneConfig
from digitml.search import hyperband
from digitml.search.runs import OBJECTIVE, trial_run_name
from digitml.search.space import searched

ENDED_STATUSES = ("COMPLETED", "FAILED", "INVALID")


def progress_line(
    oracle: kt.Oracle,
    trial: kt.engine.trial.Trial,
    config: TuneConfig,
    started: float,
    ended_at_start: int,
    on_worker: bool,
    retrain_epochs: int,
) -> str:
    """`trial k/N  hp=…  score  best  elapsed  left` for one finished trial.

    A worker sees the search only through the chief: it asks for the trial's score by id
    and prints its own trials' ids instead of the overall count. The time left is estimated from
    the pace of this process's trials (`ended_at_start` had ended before it started), and
    includes the best configuration's retraining (`retrain_epochs`: its epochs times its networks,
    so that a retraining with a partner network counts as the trial epochs it costs).
    """
    total = config.max_trials
    best = oracle.get_best_trials(1)
    best_score = f"{best[0].score:.4f}" if best and best[0].score is not None else "-"
    elapsed = time.monotonic() - started
    if on_worker:
        counter, left = f"{trial_run_name(trial.trial_id)} of {total}", ""
    else:
        done = ended_trials(oracle)
        epochs = [*trial_epochs(oracle, config), retrain_epochs]
        remaining = seconds_left(elapsed, epochs, ended_at_start, done)
        counter, left = f"trial {done}/{total}", f"  left ~{_clock(remaining)}"
    trial = oracle.get_trial(trial.trial_id)
    values = " ".join(
        f"{name}={_short(value)}" for name, value in searched(trial.hyperparameters.values).items()
    )
    score = f"{trial.score:.4f}" if trial.score is not None else trial.status.lower()
    return (
        f"{counter}  {values}  {OBJECTIVE} {score}  best {best_score}  "
        f"elapsed {_clock(elapsed)}{left}"
    )


def ended_trials(oracle: kt.Oracle) -> int:
    return sum(1 for trial in oracle.trials.values() if trial.status in ENDED_STATUSES)


def seconds_left(elapsed: float, epochs: list[int], ended_at_start: int, ended: int) -> float:
    """This process's seconds per epoch so far times the epochs of the trials still to run."""
    seconds_per_epoch = elapsed / max(sum(epochs[ended_at_start:ended]), 1)
    return seconds_per_epoch * sum(epochs[ended:])


def trial_epochs(oracle: kt.Oracle, config: TuneConfig) -> list[int]:
    """The epochs each of the search's trials trains, in the order they run: what the time left
    is estimated from."""
    if isinstance(oracle, kt.oracles.HyperbandOracle):
        return hyperband.trial_epochs(oracle, config.max_trials, config.hyperband_continue)
    return [config.epochs] * config.max_trials


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"
