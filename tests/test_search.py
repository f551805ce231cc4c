"""The search's pieces in-process: search files and their config paths, the schedule the time
left is estimated from. `tests/e2e/test_tune.py` runs whole searches as real processes."""

import pytest

from conftest import REPO_ROOT, invoke_cli
from digitml.config import ConfigError, load_tune_config

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
