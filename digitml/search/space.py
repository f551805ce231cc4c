"""The search space: a search file's hyperparameters as Keras Tuner's, a trial's values applied
to the base recipe, and the check that every trial the space can produce is a valid recipe.

A hyperparameter's name is the path of the config value it sets: `learning_rate`,
`augmentation.rotation`, `model_params.conv1_filters` (see `config.set_path`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
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
from digitml.models import MODEL_NAMES, check_param_names

TUNER_VALUE_PREFIX = "tuner/"  # Keras Tuner's own entries (Hyperband's epochs, round, trial id)


def search_space(space: dict[str, dict[str, Any]]) -> kt.HyperParameters:
    """The YAML search space as Keras Tuner hyperparameters; ConfigError names a spec Keras Tuner
    refuses (`config.check_search_spec` names the ones known to it first)."""
    hp = kt.HyperParameters()
    for name, spec in space.items():
        try:
            _define(hp, name, spec)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"search_space.{name}: {error}") from error
    return hp


def _define(hp: kt.HyperParameters, name: str, spec: dict[str, Any]) -> None:
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


def trial_config(base: TrainConfig, values: dict[str, Any], epochs: int) -> TrainConfig:
    """The base recipe with a trial's values set at their paths, trained for `epochs`."""
    raw = dataclasses.asdict(base)
    raw["epochs"] = epochs
    for path, value in searched(values).items():
        set_path(raw, path, value)
    return config_from_dict(raw, source="trial")


def check_search(config: TuneConfig, base: TrainConfig) -> None:
    """Raise ConfigError, in one line naming the key, unless every trial the search space can
    produce, and its retraining, is a valid recipe: before anything is recorded.

    Two questions, asked in turn: does each `model_params.<name>` name a parameter of the networks
    the trials build, and is each value of the space valid where it lands (a rate in [0, 1), a
    learning rate above 0, reduce_lr with a constant schedule ...)? The values asked about are
    the space's corners (`corner_trials`): each rule of a recipe is a range or a set of allowed
    values of one setting, or ties one setting to what the space cannot change (reduce_lr, there
    whenever one of its settings is searched, to the schedule), so each searched setting at each
    of its corners, the others at one of theirs, meets every rule that any trial can break. The
    property test in tests/test_search.py checks this against the whole product."""
    space = config.search_space
    check_model_paths(space, searched_models(space, base))
    search_space(space)  # Keras Tuner's own checks, which its tuner would raise mid-search
    for values, named in corner_trials(space):
        try:
            trial = trial_config(base, values, config.epochs)
        except ConfigError as error:
            raise ConfigError(f"{named}: {error}") from error
        try:
            with_overrides(trial, config.best_overrides, "best_overrides")
        except ConfigError as error:
            raise ConfigError(
                f"{named}: in the retraining, with best_overrides: {error}"
            ) from error


def check_model_paths(space: dict[str, Any], models: list[str]) -> None:
    """Raise ConfigError naming a `model_params.<name>` that one of `models` does not take."""
    for path in space:
        section, _, name = path.partition(".")
        if section == MODEL_PARAMS:
            for model in models:
                try:
                    check_param_names(model, [name])
                except ValueError as error:
                    raise ConfigError(f"search_space.{path}: {error}") from error


def searched_models(space: dict[str, Any], base: TrainConfig) -> list[str]:
    """The networks the trials build: the base recipe's, or each one a searched `model` names."""
    spec = space.get("model")
    if spec is None:
        return [base.model]
    return [value for _, value in corners(spec) if value in MODEL_NAMES]  # others: corner_trials


def corners(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    """(what it is, value) for each extreme value a searched hyperparameter can take: min and max
    (as written: a step that stops short of max still states the range meant), every choice,
    false and true."""
    kind = spec["type"]
    if kind in ("int", "float"):
        cast = int if kind == "int" else float
        return [("min", cast(spec["min"])), ("max", cast(spec["max"]))]
    if kind == "choice":
        return [("value", value) for value in spec["values"]]
    return [("value", False), ("value", True)]


def corner_trials(space: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """(a trial's values, what they are, for a message): each setting at each of its corners, the
    other settings at their first corner."""
    ends = {name: corners(spec) for name, spec in space.items()}
    first = {name: values[0][1] for name, values in ends.items()}
    for name, values in ends.items():
        for label, value in values:
            yield {**first, name: value}, f"search_space.{name}: {label} {value!r}"


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
