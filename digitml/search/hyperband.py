"""Hyperband's continuation and schedule.

A trial Hyperband promotes to its next round continues from the weights its trial of the previous
round ended with (Keras Tuner's `tuner/trial_id`) and trains only the extra epochs. The schedule
(brackets, rounds, their sizes and epochs) is Hyperband's own, computed from the oracle's public
settings (`max_epochs`, `min_epochs`, `factor`) as keras-tuner's HyperbandOracle computes it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras_tuner as kt

TRIAL_WEIGHTS = "weights.weights.h5"  # a trial's network at its last epoch


def weights_file(trial_dir: str | Path) -> Path:
    """Where a trial's network is saved after each epoch."""
    return Path(trial_dir) / TRIAL_WEIGHTS


def previous_round_weights(values: dict[str, Any], trial_dir_of: Any, enabled: bool) -> Path | None:
    """The weights a trial continues from: those its trial of the previous round ended with.

    None for a first-round trial, when continuation is off, and where that file is not on this
    machine (a worker of a distributed search that did not run the earlier round): such a trial
    trains from scratch. `trial_dir_of` maps a trial id to its folder."""
    previous = values.get("tuner/trial_id")
    if previous is None or not enabled:
        return None
    path = weights_file(trial_dir_of(previous))
    return path if path.is_file() else None


def trial_epochs(oracle: kt.oracles.HyperbandOracle, max_trials: int, continues: bool) -> list[int]:
    """The epochs each trial trains, in the order Hyperband runs them: its brackets, from the most
    aggressive, and their rounds; a continuing trial trains only its extra epochs."""
    epochs: list[int] = []
    while len(epochs) < max_trials:
        for bracket in reversed(range(_brackets(oracle))):
            trained = 0
            for round_num in range(bracket + 1):
                round_epochs = _round_epochs(oracle, bracket, round_num)
                epochs += [round_epochs - trained] * _round_size(oracle, bracket, round_num)
                trained = round_epochs if continues else 0
    return epochs[:max_trials]


def _brackets(oracle: kt.oracles.HyperbandOracle) -> int:
    count, epochs = 0, oracle.max_epochs
    while epochs >= oracle.min_epochs:
        epochs, count = epochs / oracle.factor, count + 1
    return count


def _round_size(oracle: kt.oracles.HyperbandOracle, bracket: int, round_num: int) -> int:
    """Trials in a round: each bracket gets about the same training in all."""
    first_bracket_end_size = math.ceil(1 + math.log(oracle.max_epochs, oracle.factor))
    return math.ceil(
        first_bracket_end_size / (bracket + 1) * oracle.factor ** (bracket - round_num)
    )


def _round_epochs(oracle: kt.oracles.HyperbandOracle, bracket: int, round_num: int) -> int:
    return math.ceil(oracle.max_epochs / oracle.factor ** (bracket - round_num))
