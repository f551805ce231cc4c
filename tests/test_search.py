"""The search's pieces in-process: search files and their config paths, the check that every
trial a space can produce is a valid recipe, the schedule the time left is estimated from.
`tests/e2e/test_tune.py` runs whole searches as real processes."""

import itertools

import keras_tuner as kt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO_ROOT, all_runs, invoke_cli, shipped_files
from digitml.config import (
    ConfigError,
    TuneConfig,
    load_config,
    load_tune_config,
    validate_tune,
)
from digitml.search.space import check_search, trial_config

TUNE_FILE = REPO_ROOT / "experiments" / "tune.yaml"


def search_file(tmp_path, space: str):
    path = tmp_path / "search.yaml"
    path.write_text(f"base_config: fast\nsearch_space:\n{space}")
    return path


def test_bad_search_space_is_a_usage_error(tracking_uri, tmp_path):
    path = search_file(tmp_path, "  model_params.dense_units: {type: integer}\n")
    result = invoke_cli("tune", "--config", str(path), "--dataset", "digits")
    assert result.exit_code == 2
    assert "search_space.model_params.dense_units: needs type" in result.stderr


def test_search_space_names_are_paths_of_training_settings(tmp_path):
    space = (
        "  learning_rate: {type: float, min: 0.001, max: 0.01}\n"
        "  augmentation.rotation: {type: float, min: 0.0, max: 0.1}\n"
        "  model_params.dense_units: {type: int, min: 16, max: 64}\n"
    )
    config = load_tune_config(search_file(tmp_path, space))
    assert list(config.search_space) == [
        "learning_rate",
        "augmentation.rotation",
        "model_params.dense_units",
    ]


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "dense_units",
            "'dense_units' is not a setting of the training config: use "
            "model_params.dense_units for a parameter of the model",
        ),
        (
            "rotation",
            "'rotation' is not a setting of the training config: use augmentation.rotation",
        ),
        ("augmentation.spin", "'augmentation.spin' is not a setting of the training config"),
        (
            "augmentation",
            "'augmentation' is not a setting of the training config: name one of its settings, "
            "augmentation.<name>",
        ),
    ],
)
def test_a_name_that_is_no_setting_is_refused_with_the_path_to_use(tmp_path, name, message):
    path = search_file(tmp_path, f"  {name}: {{type: bool}}\n")
    with pytest.raises(ConfigError) as refused:
        load_tune_config(path)
    assert str(refused.value) == f"search_space.{name}: {message}"


@pytest.mark.parametrize("name", shipped_files(searches=True))
def test_every_trial_of_a_shipped_search_is_a_valid_recipe(name):
    from digitml.search.workflow import base_recipe

    search = load_tune_config(name)
    check_search(search, base_recipe(search))


@pytest.mark.parametrize(
    "space, message",
    [
        (
            "model_params.dense_dropout: {type: float, min: 0.0, max: 1.0}",
            "search_space.model_params.dense_dropout: max 1.0: model_params: 'dense_dropout' "
            "must be in [0, 1), got 1.0",
        ),
        (
            "model_params.erasing: {type: choice, values: [0.0, 1.5]}",
            "search_space.model_params.erasing: value 1.5: model_params: 'erasing' must be in "
            "[0, 1), got 1.5",
        ),
        (
            "learning_rate: {type: float, min: 0, max: 0.01}",
            "search_space.learning_rate: min 0.0: learning_rate must be greater than 0, got 0.0",
        ),
        (  # the base recipe, fast, has a OneCycle schedule
            "reduce_lr.factor: {type: float, min: 0.1, max: 0.5}",
            "search_space.reduce_lr.factor: min 0.1: reduce_lr needs schedule: constant (a "
            "schedule already sets the rate)",
        ),
        (
            "early_stopping.monitor: {type: choice, values: [val_loss, val_acc]}",
            "search_space.early_stopping.monitor: value 'val_acc': early_stopping.monitor must "
            "be one of val_loss, val_accuracy, loss, accuracy; got 'val_acc'",
        ),
        (
            "batch_size: {type: int, min: 64, max: 16}",
            "search_space.batch_size: min 64 is greater than max 16",
        ),
        (
            "batch_size: {type: int, min: low, max: 64}",
            "search_space.batch_size: min must be a whole number, got 'low'",
        ),
        (
            "learning_rate: {type: float, min: 0.001, max: 0.01, sampling: logarithmic}",
            "search_space.learning_rate: sampling must be one of linear, log, reverse_log; got "
            "'logarithmic'",
        ),
        (
            "learning_rate: {type: float, min: 0.0, max: 0.01, sampling: log}",
            "search_space.learning_rate: sampling log needs min above 0, got 0.0",
        ),
        (
            "batch_size: {type: int, min: 16, max: 64, steps: 16}",
            "search_space.batch_size: unknown key 'steps' (type int takes min, max, step, "
            "sampling)",
        ),
        (
            "learning_rate: {type: choice, values: [0.01, 1]}",
            "search_space.learning_rate: values must all be of one type (Keras Tuner's rule), "
            "got [0.01, 1]: write 1 as 1.0 among decimals",
        ),
    ],
)
def test_a_space_that_can_produce_a_bad_trial_is_refused_before_anything_is_recorded(
    tracking_uri, tmp_path, space, message
):
    result = invoke_cli("tune", "--config", str(search_file(tmp_path, f"  {space}\n")))
    assert result.exit_code == 2, result.output[-2000:]
    assert result.stderr.splitlines()[-1] == f"Error: {message}"
    assert all_runs("digitml-tune") == [] and not (tmp_path / "tuning").exists()


# Settings of the `fast` recipe a search may vary, each with values a recipe takes and values it
# does not (the base recipe trains with a OneCycle schedule: reduce_lr needs a constant one).
SEARCHED_VALUES = {
    "learning_rate": ("float", [-0.01, 0.0, 0.001, 0.1]),
    "batch_size": ("int", [0, 16, 64]),
    "model_params.dense_dropout": ("float", [0.0, 0.3, 1.0]),
    "model_params.erasing": ("float", [0.0, 0.25, 1.5]),
    "model_params.stem_filters": ("int", [4, 8]),
    "augmentation.rotation": ("float", [0.0, 0.1, 1.0]),
    "reduce_lr.factor": ("float", [0.0, 0.2, 1.0]),
    "early_stopping.patience": ("int", [-1, 0, 3]),
    "optimizer": ("choice", ["adam", "sgd", "adagrad"]),
    "schedule": ("choice", ["constant", "onecycle"]),
    "model": ("choice", ["small", "stem", "nosuch"]),
    "early_stopping.restore_best_weights": ("bool", []),
}


@st.composite
def specs(draw, path: str) -> dict:
    """A spec of `path`: a range (min above max too, log sampling too), a choice, a bool."""
    kind, values = SEARCHED_VALUES[path]
    if kind == "bool":
        return {"type": "bool"}
    if kind == "choice" or draw(st.booleans()):
        chosen = draw(st.lists(st.sampled_from(values), min_size=1, max_size=3, unique=True))
        return {"type": "choice", "values": chosen}
    spec = {
        "type": kind,
        "min": draw(st.sampled_from(values)),
        "max": draw(st.sampled_from(values)),
    }
    if draw(st.booleans()):
        spec["sampling"] = "log"
    return spec


search_spaces = st.lists(
    st.sampled_from(sorted(SEARCHED_VALUES)), min_size=1, max_size=3, unique=True
).flatmap(lambda paths: st.fixed_dictionaries({path: specs(path) for path in paths}))


def every_corner_trial_is_a_recipe(space: dict) -> bool:
    """Keras Tuner takes the space, and every combination of its settings' extremes (min and
    max, every choice) is a valid recipe: the whole product, asked without check_search."""
    hp = kt.HyperParameters()
    ends = []
    for path, spec in space.items():
        try:
            if spec["type"] == "bool":
                hp.Boolean(path)
            elif spec["type"] == "choice":
                hp.Choice(path, spec["values"])
            else:
                define = hp.Int if spec["type"] == "int" else hp.Float
                define(path, spec["min"], spec["max"], sampling=spec.get("sampling", "linear"))
        except (TypeError, ValueError):
            return False
        bounds = {"bool": [False, True], "choice": spec.get("values")}
        ends.append(bounds.get(spec["type"]) or [spec["min"], spec["max"]])
    base = load_config("fast")
    for values in itertools.product(*ends):
        try:
            trial_config(base, dict(zip(space, values, strict=True)), epochs=1)
        except ConfigError:
            return False
    return True


@settings(max_examples=200, deadline=None, database=None)
@given(space=search_spaces)
def test_a_space_is_accepted_exactly_when_every_trial_at_its_corners_is_a_recipe(space):
    """Any other exception than a ConfigError fails this test too."""
    from digitml.search.workflow import base_recipe

    try:
        search = TuneConfig(base_config="fast", search_space=space)
        validate_tune(search)
        check_search(search, base_recipe(search))
        accepted = True
    except ConfigError:
        accepted = False
    assert accepted == every_corner_trial_is_a_recipe(space)


def test_a_model_parameter_the_base_network_lacks_is_refused_before_the_search(
    tracking_uri, tmp_path
):
    path = search_file(tmp_path, "  model_params.dense_unit: {type: int, min: 16, max: 64}\n")
    result = invoke_cli("tune", "--config", str(path), "--dataset", "digits")
    assert result.exit_code == 2
    assert (
        "search_space.model_params.dense_unit: 'dense_unit' is not a parameter of small"
        in result.stderr
    )


@pytest.mark.parametrize("name", ["tune", "tune-reference"])
def test_shipped_search_files_build_their_networks_at_the_widest_point(name):
    """Every searched path lands on the base recipe: a config field takes the value, a model
    parameter shows in the built network's layers, and the widest point builds a larger network
    than the narrowest."""
    from digitml.models import build_model
    from digitml.search.space import search_space, trial_config
    from digitml.search.workflow import base_recipe

    search = load_tune_config(REPO_ROOT / "experiments" / f"{name}.yaml")
    base = base_recipe(search)
    space = search_space(search.search_space).space

    def point(end: str) -> dict:
        return {
            hp.name: getattr(hp, f"{end}_value")
            if hasattr(hp, f"{end}_value")
            else hp.values[0 if end == "min" else -1]
            for hp in space
        }

    widest = trial_config(base, point("max"), epochs=1)
    network = build_model(widest.model, widest.model_params)
    layer_values = {
        value
        for layer in network.layers
        for key, value in layer.get_config().items()
        if key in ("filters", "units", "rate")
    }
    for path, value in point("max").items():
        section, _, key = path.partition(".")
        if section == "model_params":
            assert widest.model_params[key] == value and value in layer_values, path
        else:
            assert getattr(widest, path) == value, path
    narrowest = trial_config(base, point("min"), epochs=1)
    assert (
        network.count_params() > build_model(narrowest.model, narrowest.model_params).count_params()
    )


def test_time_left_counts_the_epochs_of_hyperbands_longer_rounds():
    """Hyperband: 12 trials of 2 epochs, 4 continue for 4 more, 2 for 12 more (or train 6 and 18
    from a new start); a second bracket starts where max_trials asks for more. Other tuners train
    `epochs` per trial."""
    from digitml.search.progress import trial_epochs
    from digitml.search.tuner import make_oracle

    hyperband = {"epochs": 18, "hyperband_factor": 3, "max_trials": 18}
    shipped = load_tune_config(TUNE_FILE, hyperband)
    assert trial_epochs(make_oracle(shipped), shipped) == [2] * 12 + [4] * 4 + [12] * 2
    longer = load_tune_config(TUNE_FILE, {**hyperband, "max_trials": 21})
    assert trial_epochs(make_oracle(longer), longer)[18:] == [6] * 3  # 18 / 3: next bracket
    anew = load_tune_config(TUNE_FILE, {**hyperband, "hyperband_continue": False})
    assert trial_epochs(make_oracle(anew), anew) == [2] * 12 + [6] * 4 + [18] * 2
    random = load_tune_config(TUNE_FILE, {**hyperband, "tuner": "random"})
    assert trial_epochs(make_oracle(random), random) == [18] * 18


def test_the_retraining_takes_best_overrides_on_top_of_the_winners_values(tmp_path):
    from digitml.search.space import best_recipe
    from digitml.search.workflow import base_recipe

    path = search_file(tmp_path, "  learning_rate: {type: float, min: 0.001, max: 0.01}\n")
    partner = {"model": "stem", "model_params": {"stem_filters": 8}, "members": 1}
    overrides = {"other_members": [partner], "val_fraction": 0.02, "batch_size": 32}
    search = load_tune_config(path, {"best_overrides": overrides, "best_epochs": 3})
    retraining = best_recipe(
        search, base_recipe(search), {"learning_rate": 0.005, "batch_size": 64}
    )
    assert retraining.learning_rate == 0.005 and retraining.epochs == 3
    assert retraining.ensemble_label == "small+stem" and retraining.val_fraction == 0.02
    assert retraining.batch_size == 32  # the file's override wins over the searched value


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"best_overrides": {"epochs": 3}},
            "best_overrides: set the retraining's epochs with best_epochs",
        ),
        (
            {"best_overrides": "stem"},
            "best_overrides must be a mapping of recipe settings, got 'stem'",
        ),
        (
            {"base_overrides": ["model"]},
            "base_overrides must be a mapping of recipe settings, got ['model']",
        ),
    ],
)
def test_overrides_that_cannot_be_applied_are_named(overrides, message):
    with pytest.raises(ConfigError) as refused:
        load_tune_config(TUNE_FILE, overrides)
    assert str(refused.value) == message


def test_a_best_override_that_is_no_setting_is_refused_before_the_search(tracking_uri, tmp_path):
    path = search_file(tmp_path, "  learning_rate: {type: float, min: 0.001, max: 0.01}\n")
    path.write_text(path.read_text() + "best_overrides: {membrs: 2}\n")
    result = invoke_cli("tune", "--config", str(path), "--dataset", "digits")
    assert result.exit_code == 2
    assert "best_overrides" in result.stderr and "'membrs'" in result.stderr
    assert not (tmp_path / "tuning").exists()


def test_time_left_is_paced_by_this_processs_own_trials():
    from digitml.search.progress import seconds_left

    epochs = [2, 2, 4, 12]
    assert seconds_left(60.0, epochs, ended_at_start=0, ended=2) == 60 / 4 * 16
    # Resumed after two trials: 60 s for the third trial's 4 epochs, 12 epochs to go.
    assert seconds_left(60.0, epochs, ended_at_start=2, ended=3) == 60 / 4 * 12
    assert seconds_left(60.0, epochs, ended_at_start=0, ended=4) == 0


def test_hyperband_continue_must_be_a_boolean():
    with pytest.raises(ConfigError, match="hyperband_continue"):
        load_tune_config(TUNE_FILE, {"hyperband_continue": "yes"})


@pytest.mark.parametrize(
    "values, enabled, kept, starts_from",
    [
        ({"tuner/trial_id": "0003"}, True, True, "the previous round's weights"),
        ({"tuner/trial_id": "0003"}, False, True, None),  # hyperband_continue: false
        ({"tuner/trial_id": "0003"}, True, False, None),  # that round ran on another worker
        ({}, True, True, None),  # a first-round trial
    ],
)
def test_a_later_hyperband_round_starts_from_the_previous_rounds_weights_only_if_it_can(
    tmp_path, values, enabled, kept, starts_from
):
    """`tests/e2e/test_tune.py` runs a continuing Hyperband search; here the choice itself."""
    from digitml.search.hyperband import previous_round_weights, weights_file

    def trial_dir(trial_id: str) -> str:
        return str(tmp_path / f"trial_{trial_id}")

    if kept:
        weights_file(trial_dir("0003")).parent.mkdir(parents=True)
        weights_file(trial_dir("0003")).write_bytes(b"weights")
    found = previous_round_weights(values, trial_dir, enabled)
    assert found == (weights_file(trial_dir("0003")) if starts_from else None)
