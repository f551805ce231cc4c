"""The search space: a search file's hyperparameters as Keras Tuner's, and a trial's values
applied to the base recipe.

A hyperparameter's name is the path of the config value it sets: `learning_rate`,
`augmentation.rotation`, `model_params.conv1_filters` (see `config.set_path`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras_tuner as kt

from digitml.config import (
    MODEL_PARAMS,
    ConfigError,
    TrainConfig,
    TuneConfig,
    config_from_dict,
    set_path,
    with_overrides,
)
from digitml.models import check_model_params

TUNER_VALUE_PREFIX = "tuner/"  # Keras Tuner's own entries (Hyperband's epochs, round, trial id)


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
    """The base recipe with a trial's values set at their paths, trained for `epochs`."""
    raw = dataclasses.asdict(base)
    raw["epochs"] = epochs
    for path, value in searched(values).items():
        set_path(raw, path, value)
    return config_from_dict(raw, source="trial")


def check_model_paths(space: dict[str, Any], model: str) -> None:
    """Raise ConfigError naming a `model_params.<name>` the model's builder does not take."""
    for path in space:
        section, _, name = path.partition(".")
        if section == MODEL_PARAMS:
            try:
                check_model_params(model, {name: None})
            except ValueError as error:
                raise ConfigError(f"search_space.{path}: {error}") from error


def searched(values: dict[str, Any]) -> dict[str, Any]:
    """A trial's values without Keras Tuner's own entries."""
    return {
        path: value for path, value in values.items() if not path.startswith(TUNER_VALUE_PREFIX)
    }


def retrain_epochs(config: TuneConfig, base: TrainConfig) -> int:
    """Epochs the best configuration is retrained for: the search's `best_epochs`, else the base
    recipe's."""
    return config.best_epochs or base.epochs


def best_recipe(config: TuneConfig, base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """The best configuration as it is retrained: the base recipe with the winner's `values`, for
    `retrain_epochs`, then the search's `best_overrides` (a partner network, for example)."""
    winner = trial_config(base, values, retrain_epochs(config, base))
    return with_overrides(winner, config.best_overrides, "best_overrides")
