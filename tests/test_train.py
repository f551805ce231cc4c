"""Training: in bfloat16 (a float32 model out, nothing left global), ensembles side by side,
from given weights, and the loss with label smoothing."""

import dataclasses

import keras
import numpy as np
import pytest

from digitml.config import load_config
from digitml.data import load_digits, make_splits
from digitml.precision import dtype_policy, leaf_layers
from digitml.train import (
    TRAINED_WEIGHTS,
    Crossentropy,
    predict_probabilities,
    train_model,
    training_dataset,
)


def compute_dtypes(model: keras.Model) -> set[str]:
    """The compute dtypes of the model's convolutions, inside ensemble members too."""
    return {
        layer.compute_dtype
        for layer in leaf_layers(model)
        if isinstance(layer, keras.layers.Conv2D)
    }


def members_serving_their_average(model: keras.Model, images: np.ndarray) -> list[keras.Model]:
    """The ensemble's members, once checked that the model answers their mean on `images`."""
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    each = [np.asarray(member.predict_on_batch(images)) for member in members]
    np.testing.assert_allclose(model.predict_on_batch(images), np.mean(each, axis=0), atol=1e-6)
    return members


EPOCHS = 3  # enough for over 90 % on digits, alone and as an ensemble
GLOBAL_POLICY = "mixed_float16"  # what a notebook may have set before training


def trained_while_global_policy_set(precision: str, epochs: int, limit: int | None = None):
    """Two copies of the fast recipe's network trained side by side on sklearn's digits in
    `precision` while the global dtype policy was another one: (result, splits, the
    convolutions' compute dtypes seen while it trained, the global policy right after)."""
    config = load_config(
        "fast",
        # Batches of 64: enough steps to learn in one epoch on 300 images, whatever fast's own.
        {
            "dataset": "digits",
            "epochs": epochs,
            "members": 2,
            "precision": precision,
            "batch_size": 64,
        },
    )
    splits = make_splits(load_digits(), config.val_fraction, config.seed, limit=limit)
    seen: list[set[str]] = []
    recorder = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: seen.append(compute_dtypes(recorder.model))
    )
    with dtype_policy(GLOBAL_POLICY):
        result = train_model(config, splits, [recorder], progress="none")
        policy_after = keras.config.dtype_policy().name
    return result, splits, seen, policy_after


@pytest.fixture(scope="module")
def ensemble_training():
    """Two members in float32 for three epochs: what any number of members does."""
    return trained_while_global_policy_set("float32", EPOCHS)


@pytest.fixture(scope="module")
def bfloat16_training():
    """Two members in mixed bfloat16, as the default recipe's three train where the CPU has it:
    one epoch on 300 images (bfloat16 is emulated, slowly, on a CPU without it)."""
    return trained_while_global_policy_set("mixed_bfloat16", 1, limit=300)


def test_mixed_bfloat16_trains_in_bfloat16(bfloat16_training):
    _, _, seen, _ = bfloat16_training
    assert seen == [{"bfloat16"}]


def test_bfloat16_trained_model_computes_in_float32_and_learned(bfloat16_training):
    result, splits, _, _ = bfloat16_training
    computing = [
        layer
        for layer in leaf_layers(result.model)
        if not isinstance(layer, keras.layers.InputLayer)
    ]  # an InputLayer takes the global policy's name whatever its dtype, and computes nothing
    assert {layer.compute_dtype for layer in computing} == {"float32"}
    probabilities = predict_probabilities(result.model, splits.test_images)
    assert probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert (probabilities.argmax(axis=1) == splits.test_labels).mean() > 0.4  # chance: 0.1


@pytest.mark.parametrize("training", ["ensemble_training", "bfloat16_training"])
def test_training_leaves_the_global_dtype_policy_as_it_was(training, request):
    *_, policy_after = request.getfixturevalue(training)
    assert policy_after == GLOBAL_POLICY


def test_ensemble_serves_the_average_of_its_independently_started_members(ensemble_training):
    result, splits, _, _ = ensemble_training
    model = result.model
    members = members_serving_their_average(model, splits.test_images[:32])
    assert len(members) == 2 and model.output_shape == (None, 10)
    first_kernels = [member.layers[0].get_weights()[0] for member in members]
    assert not np.allclose(first_kernels[0], first_kernels[1])


def test_ensemble_reports_the_averaged_accuracy_per_epoch(ensemble_training):
    result, splits, _, _ = ensemble_training
    assert len(result.history["accuracy"]) == len(result.history["val_accuracy"]) == EPOCHS
    probabilities = predict_probabilities(result.model, splits.val_images)
    accuracy = (probabilities.argmax(axis=1) == splits.val_labels).mean()
    assert result.history["val_accuracy"][-1] == pytest.approx(accuracy, abs=1e-6)
    assert accuracy > 0.9
    test_accuracy = (
        predict_probabilities(result.model, splits.test_images).argmax(axis=1) == splits.test_labels
    ).mean()
    assert test_accuracy > 0.9


def test_augmented_batches_repeat_exactly_from_the_seed():
    """The same seed gives the same training, augmentation included: the random transforms are
    drawn batch after batch in order (a parallel map drew them in whichever order its calls ran,
    so the default recipe's seed 42 scored 99.67 % one run and 99.69 % the next)."""
    config = load_config("default", {"dataset": "digits", "batch_size": 16})
    splits = make_splits(load_digits(), config.val_fraction, config.seed)
    first, again = (
        [np.asarray(images) for images, _ in training_dataset(splits, config)] for _ in range(2)
    )
    assert len(first) > 50 and config.augmentation.enabled
    for batch, same_batch in zip(first, again, strict=True):
        np.testing.assert_array_equal(batch, same_batch)


def test_training_starts_from_given_weights(tmp_path):
    """What a Hyperband trial does with its previous round's network: start from its weights."""
    config = load_config("fast", {"dataset": "digits", "epochs": 2})
    splits = make_splits(load_digits(), config.val_fraction, config.seed)
    weights = tmp_path / "first.weights.h5"
    saver = keras.callbacks.ModelCheckpoint(str(weights), save_weights_only=True)
    first = train_model(config, splits, [saver], progress="none")
    # A rate of ~0 leaves the kernels where they started: the saved ones, not a new random start.
    still = load_config(
        "fast", {"dataset": "digits", "epochs": 1, "learning_rate": 1e-12, "seed": 7}
    )
    second = train_model(still, splits, progress="none", initial_weights=weights)
    for before, after in zip(first.model.layers, second.model.layers, strict=True):
        if isinstance(before, keras.layers.Conv2D):
            np.testing.assert_allclose(after.get_weights()[0], before.get_weights()[0], atol=1e-6)
    accuracy = (
        predict_probabilities(second.model, splits.val_images).argmax(axis=1) == splits.val_labels
    ).mean()
    assert accuracy > 0.8


def test_crossentropy_smooths_integer_labels_and_averages_ensemble_members():
    labels = np.array([3, 0])
    probabilities = np.random.default_rng(0).dirichlet(np.ones(10), size=2).astype("float32")
    plain = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)
    np.testing.assert_allclose(Crossentropy()(labels, probabilities), plain, rtol=1e-5)
    # Smoothing 0.5: target 0.55 on the label, 0.05 on each other class.
    targets = np.full((2, 10), 0.05)
    targets[[0, 1], labels] = 0.55
    expected = -(targets * np.log(probabilities)).sum(axis=1).mean()
    np.testing.assert_allclose(Crossentropy(0.5)(labels, probabilities), expected, rtol=1e-5)
    members = np.stack([probabilities, probabilities[::-1]], axis=1)  # (batch, members, classes)
    other = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities[::-1])
    np.testing.assert_allclose(Crossentropy()(labels, members), (plain + other) / 2, rtol=1e-5)


def test_label_smoothing_caps_the_networks_confidence():
    """Trained towards 0.82 on the label (smoothing 0.2), the network stops short of certainty;
    trained on hard labels it does not."""
    splits = make_splits(load_digits(), 0.1, 42)
    peaks = {}
    for smoothing in (0.0, 0.2):
        config = load_config(
            "fast", {"dataset": "digits", "epochs": 5, "label_smoothing": smoothing}
        )
        model = train_model(config, splits, progress="none").model
        peaks[smoothing] = predict_probabilities(model, splits.train_images).max(axis=1).mean()
    assert peaks[0.0] > 0.97 and peaks[0.2] < 0.9


@pytest.mark.parametrize("epochs_backed_up", [1, 2])
def test_a_backup_whose_epoch_record_was_cut_short_resumes_after_that_epoch(
    tmp_path, epochs_backed_up
):
    """A kill while Keras wrote an epoch's record (after that epoch's weights) leaves it empty,
    with (epoch 2) or without (epoch 1) the previous epoch's copy beside it: the resume goes on
    after that epoch, neither failing nor starting over."""
    config = load_config(
        "fast", {"dataset": "digits", "epochs": epochs_backed_up, "batch_size": 64}
    )
    splits = make_splits(load_digits(), config.val_fraction, config.seed)
    backup = tmp_path / "backup"
    train_model(config, splits, backup_dir=backup, progress="none")
    (backup / TRAINED_WEIGHTS).unlink()  # as if killed before the fit ended
    (backup / "training_metadata.json").write_text("")  # and while the record was written
    resumed = train_model(
        dataclasses.replace(config, epochs=3), splits, backup_dir=backup, progress="none"
    )
    assert len(resumed.history["loss"]) == 3 - epochs_backed_up


def test_a_backup_whose_only_weights_are_cut_short_trains_anew_and_says_so(tmp_path, capsys):
    """A kill during the first epoch's backup leaves no whole weights to resume from."""
    config = load_config("fast", {"dataset": "digits", "epochs": 1, "batch_size": 64})
    splits = make_splits(load_digits(), config.val_fraction, config.seed)
    backup = tmp_path / "backup"
    train_model(config, splits, backup_dir=backup, progress="none")
    (backup / TRAINED_WEIGHTS).unlink()
    for weights in backup.glob("*.weights.h5"):
        weights.write_bytes(weights.read_bytes()[:1000])
    capsys.readouterr()
    resumed = train_model(
        dataclasses.replace(config, epochs=2), splits, backup_dir=backup, progress="none"
    )
    assert len(resumed.history["loss"]) == 2
    said = capsys.readouterr().err
    assert f"The backup in {backup} cannot be read" in said
    assert "training starts over from the first epoch" in said


def test_a_network_that_trains_with_erasing_serves_unchanged_images_the_same_each_time(tmp_path):
    config = load_config(
        "fast",
        {
            "dataset": "digits",
            "epochs": 1,
            "precision": "float32",
            "model_params": {"erasing": 0.5},
        },
    )
    splits = make_splits(load_digits(), config.val_fraction, config.seed)
    served = train_model(config, splits, progress="none").model
    served.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    first = predict_probabilities(served, splits.test_images)
    assert np.array_equal(predict_probabilities(served, splits.test_images), first)
    np.testing.assert_allclose(predict_probabilities(loaded, splits.test_images), first, atol=1e-6)


def test_a_mixed_ensemble_trains_its_architectures_side_by_side():
    config = load_config(
        "fast",
        {
            "dataset": "digits",
            "epochs": EPOCHS,
            "batch_size": 64,
            "precision": "float32",
            "other_members": [{"model": "stem", "model_params": {"stem_filters": 8}}],
        },
    )
    splits = make_splits(load_digits(), config.val_fraction, config.seed)
    result = train_model(config, splits, progress="none")
    members = members_serving_their_average(result.model, splits.test_images[:32])
    assert [member.name for member in members] == ["member_0", "member_1"]
    first_convs = [member.layers[0] for member in members]
    assert [(conv.filters, conv.strides) for conv in first_convs] == [(32, (2, 2)), (8, (1, 1))]
    probabilities = predict_probabilities(result.model, splits.test_images)
    assert (probabilities.argmax(axis=1) == splits.test_labels).mean() > 0.8  # chance: 0.1
