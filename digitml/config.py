"""Typed training configuration: YAML files merged with CLI overrides, validated in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def _recipes_dir() -> Path:
    """The shipped recipes: inside the package when installed from a wheel (pyproject maps the
    top-level experiments/ to digitml/experiments/), else the checkout's experiments/ (an
    editable install, or `python -m digitml.cli` from a checkout that is not installed)."""
    package = Path(__file__).resolve().parent
    installed = package / "experiments"
    return installed if installed.is_dir() else package.parent / "experiments"


EXPERIMENTS_DIR = _recipes_dir()
DEFAULT_CONFIG = "default.yaml"
OPTIMIZERS = ("adam", "sgd", "rmsprop")
DATASETS = ("mnist", "digits")
SCHEDULES = ("constant", "onecycle", "cosine")
# "auto": bfloat16 compute where the CPU multiplies bfloat16 natively (AMX, AVX512-BF16), else float32
PRECISIONS = ("float32", "mixed_bfloat16", "auto")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it."""


@dataclass
class AugmentationConfig:
    """Random affine augmentation strengths (fractions, as Keras' Random* layers take them)."""

    rotation: float = 0.0
    translation: float = 0.0
    zoom: float = 0.0

    @property
    def enabled(self) -> bool:
        return any(value > 0 for value in (self.rotation, self.translation, self.zoom))


@dataclass
class EarlyStoppingConfig:
    monitor: str = "val_loss"
    patience: int = 3
    restore_best_weights: bool = True


@dataclass
class ReduceLROnPlateauConfig:
    monitor: str = "val_loss"
    factor: float = 0.2
    patience: int = 2
    min_lr: float = 1e-4


@dataclass
class TrainConfig:
    """Everything that determines a training run; logged whole as the run's `config.yaml`."""

    name: str = "custom"
    model: str = "baseline"
    model_params: dict[str, Any] = field(default_factory=dict)
    members: int = 1  # more than 1: an ensemble of that many copies, trained side by side
    label_smoothing: float = 0.0  # cross-entropy target: 1 - s on the label, s over all classes
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    precision: str = "float32"
    dataset: str = "mnist"
    data_dir: str | None = None
    limit: int | None = None
    val_fraction: float = 0.1
    seed: int = 42
    experiment: str = "digitml"
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    early_stopping: EarlyStoppingConfig | None = None
    reduce_lr: ReduceLROnPlateauConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_NESTED = {
    "augmentation": AugmentationConfig,
    "early_stopping": EarlyStoppingConfig,
    "reduce_lr": ReduceLROnPlateauConfig,
}


def config_path(name_or_path: str) -> Path:
    """Resolve `fast`, `fast.yaml` or a path to an existing config file."""
    candidates = [Path(name_or_path)]
    if not name_or_path.endswith((".yaml", ".yml")):
        candidates.append(EXPERIMENTS_DIR / f"{name_or_path}.yaml")
    candidates.append(EXPERIMENTS_DIR / name_or_path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"config file not found: {name_or_path} (neither a file nor a recipe in {EXPERIMENTS_DIR})"
    )


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Read a YAML config (default: experiments/default.yaml), apply overrides, validate."""
    path = config_path(str(path or EXPERIMENTS_DIR / DEFAULT_CONFIG))
    raw = _read_yaml(path)
    raw.setdefault("name", Path(path).stem)
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    if given.get("model", raw.get("model")) != raw.get("model"):
        raw.pop("model_params", None)  # the file's model_params belong to the file's model
    raw.update(given)
    return config_from_dict(raw, source=str(path))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error.__class__.__name__})") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    return raw


def config_from_dict(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a validated TrainConfig from plain data, naming any unknown key."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})"
        )
    values = dict(raw)
    for key, nested_type in _NESTED.items():
        if key in values and values[key] is not None:
            values[key] = _nested(nested_type, values[key], f"{source}: {key}")
    config = TrainConfig(**values)
    validate(config)
    return config


def _nested(nested_type: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    known = {f.name for f in dataclasses.fields(nested_type)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})"
        )
    return nested_type(**raw)


def validate(config: TrainConfig) -> None:
    """Raise ConfigError naming the first invalid value."""
    from digitml.models import MODEL_NAMES, check_model_params

    _check_type(config, "epochs", int, minimum=1)
    _check_type(config, "members", int, minimum=1)
    _check_type(config, "batch_size", int, minimum=1)
    _check_type(config, "seed", int, minimum=0)
    _check_type(config, "learning_rate", (int, float), minimum=0, exclusive=True)
    if config.limit is not None:
        _check_type(config, "limit", int, minimum=20)
    _check_fraction("label_smoothing", config.label_smoothing)
    if not 0 < config.val_fraction < 1:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {config.val_fraction}")
    _check_choice("model", config.model, MODEL_NAMES)
    _check_choice("optimizer", config.optimizer, OPTIMIZERS)
    _check_choice("dataset", config.dataset, DATASETS)
    _check_choice("schedule", config.schedule, SCHEDULES)
    _check_choice("precision", config.precision, PRECISIONS)
    for name in ("rotation", "translation", "zoom"):
        _check_fraction(f"augmentation.{name}", getattr(config.augmentation, name))
    if config.schedule != "constant" and config.reduce_lr is not None:
        raise ConfigError("reduce_lr needs schedule: constant (a schedule already sets the rate)")
    try:
        check_model_params(config.model, config.model_params)
    except ValueError as error:
        raise ConfigError(f"model_params: {error}") from error


def _check_type(
    config: TrainConfig, key: str, kind: Any, minimum: float, exclusive: bool = False
) -> None:
    value = getattr(config, key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if value < minimum or (exclusive and value == minimum):
        bound = f"greater than {minimum}" if exclusive else f"at least {minimum}"
        raise ConfigError(f"{key} must be {bound}, got {value}")


def _check_fraction(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{key} must be in [0, 1), got {value!r}")


def _check_choice(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


TUNERS = ("hyperband", "random", "bayesian")
SEARCH_TYPES = ("int", "float", "choice", "bool")


@dataclass
class TuneConfig:
    """A hyperparameter search: what to vary (search_space), how, and on which base recipe."""

    name: str = "tune"
    base_config: str = "tuned"
    base_overrides: dict[str, Any] = field(default_factory=dict)
    tuner: str = "hyperband"
    max_trials: int = 10
    epochs: int = 4
    hyperband_factor: int = 3
    # A trial Hyperband promotes starts from the weights its previous round ended with and trains
    # only the extra epochs (Keras Tuner's way); false: it trains all its epochs from a new start.
    hyperband_continue: bool = True
    best_epochs: int | None = None
    dataset: str = "mnist"
    data_dir: str | None = None
    limit: int | None = None
    experiment: str = "digitml-tune"
    register_as: str = "digit-classifier"
    tuning_dir: str | None = None
    seed: int = 42
    search_space: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


def load_tune_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TuneConfig:
    """Read a search YAML, apply overrides, validate (naming the bad key or value)."""
    path = config_path(str(path))
    raw = _read_yaml(path)
    raw.setdefault("name", Path(path).stem)
    raw.update({key: value for key, value in (overrides or {}).items() if value is not None})
    known = {f.name for f in dataclasses.fields(TuneConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})")
    config = TuneConfig(**raw)
    validate_tune(config)
    return config


def validate_tune(config: TuneConfig) -> None:
    _check_choice("tuner", config.tuner, TUNERS)
    _check_choice("dataset", config.dataset, DATASETS)
    for key in ("max_trials", "epochs"):
        _check_type(config, key, int, minimum=1)
    _check_type(config, "hyperband_factor", int, minimum=2)
    if not isinstance(config.hyperband_continue, bool):
        raise ConfigError(
            f"hyperband_continue must be true or false, got {config.hyperband_continue!r}"
        )
    if config.best_epochs is not None:
        _check_type(config, "best_epochs", int, minimum=1)
    if config.limit is not None:
        _check_type(config, "limit", int, minimum=20)
    config_path(config.base_config)
    if not config.search_space:
        raise ConfigError("search_space is empty: name at least one hyperparameter")
    for name, spec in config.search_space.items():
        if not isinstance(spec, dict) or spec.get("type") not in SEARCH_TYPES:
            raise ConfigError(f"search_space.{name}: needs type: one of {', '.join(SEARCH_TYPES)}")
        needed = {"int": ("min", "max"), "float": ("min", "max"), "choice": ("values",)}
        for key in needed.get(spec["type"], ()):
            if key not in spec:
                raise ConfigError(f"search_space.{name}: missing '{key}'")


DEFAULT_APP_MODEL_URI = "models:/digit-classifier@champion"


@dataclass
class AppSettings:
    """What the upload app talks to: a model URI (loaded in-process) or a REST endpoint."""

    model_uri: str = DEFAULT_APP_MODEL_URI
    endpoint: str | None = None

    @classmethod
    def from_env(cls) -> AppSettings:
        """`digitml app` passes its options to the Streamlit process through the environment."""
        import os

        return cls(
            model_uri=os.environ.get("DIGITML_APP_MODEL_URI") or DEFAULT_APP_MODEL_URI,
            endpoint=os.environ.get("DIGITML_APP_ENDPOINT") or None,
        )
