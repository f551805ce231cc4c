"""Typed training configuration: YAML files merged with CLI overrides, validated in one place."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from digitml import console
from digitml.errors import SettingError


def _recipes_dir() -> Path:
    """The shipped recipes: inside the package when installed from a wheel (pyproject maps the
    top-level experiments/ to digitml/experiments/), else the checkout's experiments/ (an
    editable install, or `python -m digitml.cli` from a checkout that is not installed)."""
    package = Path(__file__).resolve().parent
    installed = package / "experiments"
    return installed if installed.is_dir() else package.parent / "experiments"


EXPERIMENTS_DIR = _recipes_dir()
DEFAULT_CONFIG = "default.yaml"
DEFAULT_DATASET = "mnist"
DEFAULT_EXPERIMENT = "digitml"
DEFAULT_MODEL_NAME = "digit-classifier"  # the registered model tune, promote and the app use
DEFAULT_APP_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@champion"
OPTIMIZERS = ("adam", "sgd", "rmsprop")
DATASETS = ("mnist", "digits")
SCHEDULES = ("constant", "onecycle", "cosine")
# "auto": bfloat16 compute where the CPU multiplies bfloat16 natively (AMX, AVX512-BF16), else float32
PRECISIONS = ("float32", "mixed_bfloat16", "auto")
TUNERS = ("hyperband", "random", "bayesian")
EXPORT_FORMATS = ("onnx", "litert", "saved_model")  # what `digitml export` writes
# The keys each type of searched hyperparameter takes, besides `type` (Keras Tuner's Int, Float,
# Choice and Boolean: `min` and `max` are its min_value and max_value).
SEARCH_SPEC_KEYS = {
    "int": ("min", "max", "step", "sampling"),
    "float": ("min", "max", "step", "sampling"),
    "choice": ("values",),
    "bool": (),
}
SEARCH_TYPES = tuple(SEARCH_SPEC_KEYS)
SAMPLINGS = ("linear", "log", "reverse_log")
# What a fit logs every epoch: the quantities early stopping and reduce_lr can watch.
MONITORED = ("val_loss", "val_accuracy", "loss", "accuracy")
MIN_LIMIT = 20  # two images per class: the fewest that a stratified split can divide


@dataclass(frozen=True)
class Bound:
    """A number setting's type and lowest value: what a config file's value and the command-line
    option that overrides it both obey (`validate`, and the CLI's option types)."""

    kind: type  # int, or float (which takes ints too)
    minimum: int | float
    exclusive: bool = False  # the minimum itself is not allowed


BOUNDS = {
    "epochs": Bound(int, 1),
    "members": Bound(int, 1),
    "batch_size": Bound(int, 1),
    "seed": Bound(int, 0),
    "learning_rate": Bound(float, 0, exclusive=True),
    "limit": Bound(int, MIN_LIMIT),
    "max_trials": Bound(int, 1),
    "best_epochs": Bound(int, 1),
    "hyperband_factor": Bound(int, 2),
    "early_stopping.patience": Bound(int, 0),
    "reduce_lr.patience": Bound(int, 0),
    "reduce_lr.min_lr": Bound(float, 0),
}
CHOICES = {
    "optimizer": OPTIMIZERS,
    "dataset": DATASETS,
    "schedule": SCHEDULES,
    "precision": PRECISIONS,
    "tuner": TUNERS,
}


WORK_DIR_VARIABLE = "DIGITML_WORK_DIR"


def work_dir() -> Path:
    """Where digitml keeps its working files: the checkpoints an interrupted training resumes
    from, a search's tuner state. $DIGITML_WORK_DIR, else the user's cache folder
    ($XDG_CACHE_HOME/digitml, ~/.cache/digitml): never the folder a command runs in, which under
    `mlflow run` is the project checkout."""
    if os.environ.get(WORK_DIR_VARIABLE):
        return Path(os.environ[WORK_DIR_VARIABLE])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "digitml"


def keras_home() -> Path:
    """Keras' own folder, where `keras.datasets` keep their downloads (datasets/): $KERAS_HOME,
    else ~/.keras, else /tmp/.keras where the home folder cannot be written (Keras' rule)."""
    if os.environ.get("KERAS_HOME"):
        return Path(os.environ["KERAS_HOME"])
    home = Path.home()
    return (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"


class ConfigError(SettingError, ValueError):
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
class MemberGroup:
    """Copies of one more architecture in a mixed ensemble (`TrainConfig.other_members`)."""

    model: str = ""
    model_params: dict[str, Any] = field(default_factory=dict)
    members: int = 1


@dataclass
class TrainConfig:
    """Everything that determines a training run; logged whole as the run's `config.yaml`."""

    name: str = "custom"
    model: str = "baseline"
    model_params: dict[str, Any] = field(default_factory=dict)
    members: int = 1  # more than 1: an ensemble of that many copies, trained side by side
    # Members of other architectures trained beside them (a mixed ensemble: networks of different
    # shapes share fewer mistakes than copies of one): [{model, model_params, members}, ...]
    other_members: list[MemberGroup] = field(default_factory=list)
    label_smoothing: float = 0.0  # cross-entropy target: 1 - s on the label, s over all classes
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    precision: str = "float32"
    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    limit: int | None = None
    val_fraction: float = 0.1
    seed: int = 42
    experiment: str = DEFAULT_EXPERIMENT
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    early_stopping: EarlyStoppingConfig | None = None
    reduce_lr: ReduceLROnPlateauConfig | None = None

    @property
    def member_groups(self) -> list[MemberGroup]:
        """The `members` copies of `model`, then the other architectures."""
        return [MemberGroup(self.model, self.model_params, self.members), *self.other_members]

    @property
    def architectures(self) -> list[tuple[str, dict[str, Any]]]:
        """(model, model_params) of every member, in order: one entry for a single network."""
        groups = self.member_groups
        return [(group.model, group.model_params) for group in groups for _ in range(group.members)]

    @property
    def ensemble_label(self) -> str:
        """The networks as a person scans them: `small`, `small×3`, `small×2+stem×2`; a group that
        trains with random erasing is marked, `small×2+small-erasing×2`."""
        return "+".join(
            group.model
            + ("-erasing" if group.model_params.get("erasing") else "")
            + (f"×{group.members}" if group.members > 1 else "")
            for group in self.member_groups
        )

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


def with_overrides(config: TrainConfig, overrides: dict[str, Any], source: str) -> TrainConfig:
    """`config` with top-level settings replaced, validated; applied on the resolved config, so
    `reduce_lr: null` switches a callback off. `source` names the overrides in errors."""
    return config_from_dict({**dataclasses.asdict(config), **overrides}, source=source)


def config_from_dict(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a validated TrainConfig from plain data, naming any unknown key."""
    check_keys(raw, TrainConfig, source)
    values = dict(raw)
    for key, nested_type in _NESTED.items():
        if key in values and values[key] is not None:
            values[key] = _nested(nested_type, values[key], f"{source}: {key}")
    if values.get(OTHER_MEMBERS) is not None:
        values[OTHER_MEMBERS] = _member_groups(values[OTHER_MEMBERS], f"{source}: {OTHER_MEMBERS}")
    config = TrainConfig(**values)
    validate(config)
    return config


def _member_groups(raw: Any, where: str) -> list[MemberGroup]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of {{model, model_params, members}}")
    groups = [_nested(MemberGroup, entry, f"{where}[{index}]") for index, entry in enumerate(raw)]
    for index, group in enumerate(groups):
        if not group.model:
            raise ConfigError(f"{where}[{index}]: missing 'model'")
        _check_bound(f"{OTHER_MEMBERS}[{index}].members", group.members, BOUNDS["members"])
    return groups


def _nested(nested_type: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    check_keys(raw, nested_type, where)
    return nested_type(**raw)


def check_keys(raw: dict[str, Any], config_type: type, where: str) -> None:
    """Raise ConfigError naming the first key of `raw` that `config_type` has no field for."""
    known = field_names(config_type)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})"
        )


def field_names(config_type: type) -> set[str]:
    return {f.name for f in dataclasses.fields(config_type)}


def validate(config: TrainConfig) -> None:
    """Raise ConfigError naming the first invalid value: the plain settings first, then the model,
    which takes Keras (seconds to import), so that a typo answers at once."""
    _check_settings(config, ("epochs", "members", "batch_size", "seed", "learning_rate", "limit"))
    _check_settings(config, ("optimizer", "dataset", "schedule", "precision"))
    _check_fraction("label_smoothing", config.label_smoothing)
    if not 0 < config.val_fraction < 1:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {config.val_fraction}")
    for name in ("rotation", "translation", "zoom"):
        _check_fraction(f"augmentation.{name}", getattr(config.augmentation, name))
    _check_callbacks(config)
    if config.schedule != "constant" and config.reduce_lr is not None:
        raise ConfigError("reduce_lr needs schedule: constant (a schedule already sets the rate)")
    console.load_tensorflow()
    from digitml.models import MODEL_NAMES, check_model_params

    wheres = ["", *(f"{OTHER_MEMBERS}[{i}]." for i in range(len(config.other_members)))]
    for where, group in zip(wheres, config.member_groups, strict=True):
        _check_choice(f"{where}model", group.model, MODEL_NAMES)
        try:
            check_model_params(group.model, group.model_params)
        except ValueError as error:
            raise ConfigError(f"{where}model_params: {error}") from error


def _check_callbacks(config: TrainConfig) -> None:
    """Early stopping and reduce_lr watch a quantity the fit logs (Keras only warns, every epoch,
    of one it does not find, and never stops), with patience and rates Keras takes."""
    for section in ("early_stopping", "reduce_lr"):
        settings = getattr(config, section)
        if settings is not None:
            _check_choice(f"{section}.monitor", settings.monitor, MONITORED)
            _check_bound(f"{section}.patience", settings.patience, BOUNDS[f"{section}.patience"])
    if config.early_stopping is not None and not isinstance(
        config.early_stopping.restore_best_weights, bool
    ):
        raise ConfigError(
            "early_stopping.restore_best_weights must be true or false, got "
            f"{config.early_stopping.restore_best_weights!r}"
        )
    if config.reduce_lr is not None:
        factor = config.reduce_lr.factor
        if not is_fraction(factor) or factor == 0:
            raise ConfigError(f"reduce_lr.factor must be between 0 and 1, got {factor!r}")
        _check_bound("reduce_lr.min_lr", config.reduce_lr.min_lr, BOUNDS["reduce_lr.min_lr"])


def _check_settings(config: Any, keys: tuple[str, ...]) -> None:
    """Check each setting against its entry in BOUNDS or CHOICES; None means unset (optional
    settings only: the others have defaults)."""
    for key in keys:
        value = getattr(config, key)
        if key in CHOICES:
            _check_choice(key, value, CHOICES[key])
        elif value is not None:
            _check_bound(key, value, BOUNDS[key])


def _check_bound(key: str, value: Any, bound: Bound) -> None:
    kinds = (int, float) if bound.kind is float else bound.kind
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "a number" if bound.kind is float else "a whole number"
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    if value < bound.minimum or (bound.exclusive and value == bound.minimum):
        limit = f"greater than {bound.minimum}" if bound.exclusive else f"at least {bound.minimum}"
        raise ConfigError(f"{key} must be {limit}, got {value}")


def _check_fraction(key: str, value: Any) -> None:
    if not is_fraction(value):
        raise ConfigError(f"{key} must be in [0, 1), got {value!r}")


def is_fraction(value: Any) -> bool:
    """A number in [0, 1): a rate, a share or a chance."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < 1


def _check_choice(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


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
    # Settings the best configuration's retraining takes on top of the winner's values (a
    # partner network, `other_members`, makes the registered model a mixed ensemble).
    best_overrides: dict[str, Any] = field(default_factory=dict)
    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    limit: int | None = None
    experiment: str = "digitml-tune"
    register_as: str = DEFAULT_MODEL_NAME
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
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    raw.update(given)
    check_keys(raw, TuneConfig, str(path))
    config = TuneConfig(**raw)
    validate_tune(config)
    if "epochs" in given and "best_epochs" not in given:
        # A shorter search asked for on the command line (`-P epochs=2`) shortens its retraining
        # too; a longer one leaves the retraining as the file says.
        config.best_epochs = min(config.best_epochs or config.epochs, config.epochs)
    return config


def validate_tune(config: TuneConfig) -> None:
    _check_settings(config, ("tuner", "dataset", "max_trials", "epochs", "hyperband_factor"))
    _check_settings(config, ("best_epochs", "limit", "seed"))
    if not isinstance(config.hyperband_continue, bool):
        raise ConfigError(
            f"hyperband_continue must be true or false, got {config.hyperband_continue!r}"
        )
    config_path(config.base_config)
    for key in ("base_overrides", "best_overrides"):
        if not isinstance(getattr(config, key), dict):
            raise ConfigError(
                f"{key} must be a mapping of recipe settings, got {getattr(config, key)!r}"
            )
    if "epochs" in config.best_overrides:
        raise ConfigError("best_overrides: set the retraining's epochs with best_epochs")
    if not isinstance(config.search_space, dict) or not config.search_space:
        raise ConfigError("search_space is empty: name at least one hyperparameter")
    for name, spec in config.search_space.items():
        check_search_spec(name, spec)
        check_path(name, f"search_space.{name}")


def check_search_spec(name: str, spec: Any) -> None:
    """Raise ConfigError naming what Keras Tuner would refuse in one searched hyperparameter's
    spec (or silently ignore: a key it does not take). Whether its values make valid recipes is
    `search.space.check_search`'s question."""
    where = f"search_space.{name}"
    if not isinstance(spec, dict) or spec.get("type") not in SEARCH_TYPES:
        raise ConfigError(f"{where}: needs type: one of {', '.join(SEARCH_TYPES)}")
    kind = spec["type"]
    known = SEARCH_SPEC_KEYS[kind]
    unknown = sorted(set(spec) - {"type", *known})
    if unknown:
        takes = f"takes {', '.join(known)}" if known else "takes no other key"
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (type {kind} {takes})")
    if kind == "choice":
        _check_choice_values(where, spec.get("values"))
    elif kind in ("int", "float"):
        _check_range(where, kind, spec)


def _check_choice_values(where: str, values: Any) -> None:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: values must be a list of one or more values, got {values!r}")
    types = {type(value) for value in values}
    if not types <= {str, int, float, bool}:
        raise ConfigError(f"{where}: values must be numbers, strings or true/false, got {values!r}")
    if len(types) > 1:
        raise ConfigError(
            f"{where}: values must all be of one type (Keras Tuner's rule), got {values!r}: "
            "write 1 as 1.0 among decimals"
        )


def _check_range(where: str, kind: str, spec: dict[str, Any]) -> None:
    """min and max (and step) of the spec's type, min <= max, a sampling Keras Tuner knows."""
    bound_type = Bound(int if kind == "int" else float, float("-inf"))
    for key in ("min", "max"):
        if key not in spec:
            raise ConfigError(f"{where}: missing '{key}'")
        _check_bound(f"{where}: {key}", spec[key], bound_type)
    if spec["min"] > spec["max"]:
        raise ConfigError(f"{where}: min {spec['min']} is greater than max {spec['max']}")
    sampling = spec.get("sampling", "linear")
    _check_choice(f"{where}: sampling", sampling, SAMPLINGS)
    if sampling != "linear" and spec["min"] <= 0:
        raise ConfigError(f"{where}: sampling {sampling} needs min above 0, got {spec['min']}")
    if spec.get("step") is not None:
        # A log step multiplies: it must be more than 1; a linear one adds: more than 0.
        least = 1 if sampling != "linear" else 0
        _check_bound(f"{where}: step", spec["step"], Bound(bound_type.kind, least, exclusive=True))


MODEL_PARAMS = "model_params"
OTHER_MEMBERS = "other_members"


def check_path(path: str, where: str) -> None:
    """Raise ConfigError unless `path` names a setting of a training config: a field
    (`learning_rate`), a nested setting (`augmentation.rotation`) or a model parameter
    (`model_params.conv1_filters`; the model's builder checks the name)."""
    section, _, key = path.partition(".")
    if key and section == MODEL_PARAMS:
        return
    if key and section in _NESTED and key in field_names(_NESTED[section]):
        return
    sections = (*_NESTED, MODEL_PARAMS, OTHER_MEMBERS)
    if not key and path in field_names(TrainConfig) and path not in sections:
        return
    raise ConfigError(f"{where}: '{path}' is not a setting of the training config{_hint(path)}")


def _hint(path: str) -> str:
    """A suggestion for a name without its section: before paths, a search space named model
    parameters and nested settings alone (`conv1_filters`, `rotation`)."""
    if "." in path:
        return ""
    if path in (*_NESTED, MODEL_PARAMS):
        return f": name one of its settings, {path}.<name>"
    for section, nested_type in _NESTED.items():
        if path in field_names(nested_type):
            return f": use {section}.{path}"
    return f": use {MODEL_PARAMS}.{path} for a parameter of the model"


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set the setting at `path` (see `check_path`) in a training config's plain data."""
    check_path(path, path)
    section, _, key = path.partition(".")
    if key:
        raw[section] = {**(raw.get(section) or {}), key: value}
    else:
        raw[section] = value
