import pytest

from conftest import shipped_files
from digitml.config import EXPERIMENTS_DIR, ConfigError, load_config, load_tune_config


@pytest.mark.parametrize("name", shipped_files(searches=False))
def test_every_experiment_config_is_valid(name):
    config = load_config(EXPERIMENTS_DIR / f"{name}.yaml")
    assert config.name == name


@pytest.mark.parametrize(
    "callbacks, message",
    [
        (
            {"early_stopping": {"monitor": "val_acc"}},
            "early_stopping.monitor must be one of val_loss, val_accuracy, loss, accuracy; got "
            "'val_acc'",
        ),
        (
            {"early_stopping": {"patience": -1}},
            "early_stopping.patience must be at least 0, got -1",
        ),
        (
            {"early_stopping": {"restore_best_weights": "yes"}},
            "early_stopping.restore_best_weights must be true or false, got 'yes'",
        ),
        ({"reduce_lr": {"monitor": "accuracy_val"}}, "reduce_lr.monitor must be one of"),
        ({"reduce_lr": {"factor": 1.0}}, "reduce_lr.factor must be between 0 and 1, got 1.0"),
        ({"reduce_lr": {"patience": 1.5}}, "reduce_lr.patience must be a whole number, got 1.5"),
        ({"reduce_lr": {"min_lr": -0.1}}, "reduce_lr.min_lr must be at least 0, got -0.1"),
    ],
)
def test_callback_settings_that_keras_would_ignore_or_refuse_mid_run_are_named(callbacks, message):
    with pytest.raises(ConfigError) as refused:
        load_config("callbacks", callbacks)
    assert str(refused.value).startswith(message)


def test_no_config_means_default_yaml():
    assert load_config().name == "default"


def test_baseline_matches_the_reference_stage():
    config = load_config("baseline")
    assert (config.model, config.epochs, config.batch_size, config.val_fraction) == (
        "baseline",
        10,
        64,
        0.1,
    )
    assert config.early_stopping is None and config.reduce_lr is None


def test_callbacks_config_has_the_reference_callbacks():
    config = load_config("callbacks")
    assert config.epochs == 50
    assert (config.early_stopping.monitor, config.early_stopping.patience) == ("val_loss", 3)
    assert config.early_stopping.restore_best_weights
    plateau = config.reduce_lr
    assert (plateau.monitor, plateau.factor, plateau.patience, plateau.min_lr) == (
        "val_loss",
        0.2,
        2,
        1e-4,
    )


def test_default_recipe_augments_with_a_schedule():
    config = load_config("default")
    assert config.augmentation.enabled and config.schedule != "constant"


def test_overrides_win_over_the_file_and_none_means_unset():
    config = load_config("baseline", {"epochs": 3, "model": "resnet", "seed": None})
    assert (config.epochs, config.model, config.seed) == (3, "resnet", 42)


def test_another_model_drops_the_files_model_params():
    assert load_config("default").model_params
    config = load_config("default", {"model": "resnet"})
    assert (config.model, config.model_params) == ("resnet", {})
    assert load_config("default", {"model": "small"}).model_params == load_config().model_params


def test_a_mixed_ensemble_lists_every_members_architecture_in_order():
    config = load_config(
        "default",
        {"members": 2, "other_members": [{"model": "stem", "model_params": {"stem_filters": 8}}]},
    )
    small = load_config("default").model_params
    assert config.architectures == [
        ("small", small),
        ("small", small),
        ("stem", {"stem_filters": 8}),
    ]
    assert config.ensemble_label == "small×2+stem"
    assert load_config("fast").architectures == [("small", {})]
    assert load_config("fast").ensemble_label == "small"


def test_the_ensemble_label_marks_the_networks_that_train_with_erasing():
    label = load_config("record").ensemble_label
    assert label == "small×2+stem×2+small-erasing×2+stem-erasing×2"


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: baseline\nepochz: 3\n")
    with pytest.raises(ConfigError, match="epochz"):
        load_config(path)


def test_unknown_nested_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("augmentation:\n  rotate: 0.1\n")
    with pytest.raises(ConfigError, match="augmentation.*rotate"):
        load_config(path)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": -3}, "epochs"),
        ({"batch_size": "big"}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"model": "transformer"}, "model"),
        ({"optimizer": "adagrad"}, "optimizer"),
        ({"dataset": "cifar"}, "dataset"),
        ({"precision": "float16"}, "precision"),
        ({"limit": 5}, "limit"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"label_smoothing": True}, "label_smoothing"),
        ({"model_params": {"heads": 4}}, "heads"),
        ({"other_members": "stem"}, "other_members: expected a list"),
        ({"other_members": [{"members": 2}]}, r"other_members\[0\]: missing 'model'"),
        ({"other_members": [{"model": "stem", "copies": 2}]}, r"other_members\[0\].*'copies'"),
        ({"other_members": [{"model": "transformer"}]}, r"other_members\[0\]\.model"),
        ({"other_members": [{"model": "stem", "members": 0}]}, r"other_members\[0\]\.members"),
        (
            {"other_members": [{"model": "small"}, {"model": "stem", "model_params": {"x": 1}}]},
            r"other_members\[1\]\.model_params: 'x'",
        ),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("baseline", override)


def test_missing_config_file_is_named():
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config("nowhere.yaml")


def test_invalid_yaml_is_reported(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    "overrides, best_epochs",
    [
        ({}, 18),  # tune.yaml's own
        ({"epochs": 2}, 2),  # a shorter search shortens the retraining too
        ({"epochs": 30}, 18),  # a longer one leaves it
        ({"epochs": 2, "best_epochs": 5}, 5),
    ],
)
def test_a_shorter_search_on_the_command_line_shortens_its_retraining(overrides, best_epochs):
    assert load_tune_config("tune", overrides).best_epochs == best_epochs
