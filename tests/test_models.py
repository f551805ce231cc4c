import numpy as np
import pytest

from conftest import invoke_cli
from digitml.models import MODEL_NAMES, build_model


def test_resnet_has_the_reference_parameter_count():
    model = build_model("resnet")
    assert model.count_params() == 2_055_306
    dense_256 = [layer for layer in model.layers if getattr(layer, "units", None) == 256]
    assert [layer.count_params() for layer in dense_256] == [1_605_888]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_maps_an_mnist_batch_to_ten_probabilities(name):
    model = build_model(name)
    assert model.input_shape == (None, 28, 28, 1)
    images = np.random.default_rng(0).random((4, 28, 28, 1), np.float32)
    probabilities = np.asarray(model.predict_on_batch(images))
    assert probabilities.shape == (4, 10) and (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_tuned_model_has_the_reference_architecture():
    filters = [layer.filters for layer in build_model("tuned").layers if hasattr(layer, "filters")]
    assert filters == [128, 192]


def test_stem_net_searches_the_widths_after_its_fixed_full_resolution_pair():
    model = build_model("stem", {"conv1_filters": 96, "conv2_filters": 192})
    filters = [layer.filters for layer in model.layers if hasattr(layer, "filters")]
    assert filters == [32, 32, 96, 192]
    sizes = [layer.output.shape[1] for layer in model.layers if hasattr(layer, "filters")]
    assert sizes == [28, 28, 14, 7]


def test_model_params_override_the_registered_defaults():
    small = build_model("tuned", {"conv1_filters": 16, "conv2_filters": 16, "dense_units": 16})
    assert small.count_params() < build_model("tuned").count_params()


def test_unknown_model_param_is_rejected():
    with pytest.raises(ValueError, match="heads"):
        build_model("baseline", {"heads": 2})


def test_erasing_blacks_out_a_patch_of_some_training_images_and_none_at_inference():
    erasing = build_model("stem", {"erasing": 0.5}).layers[0]
    images = np.ones((400, 28, 28, 1), "float32")
    erased = np.asarray(erasing(images, training=True))
    black = (erased == 0).sum(axis=(1, 2, 3))
    patched = black > 0
    assert 100 < patched.sum() < 300  # about half
    assert 0.01 < black[patched].min() / 784 and black.max() / 784 < 0.15
    assert np.array_equal(erased[~patched], images[~patched])
    assert np.array_equal(np.asarray(erasing(images, training=False)), images)


@pytest.mark.parametrize(
    ("model", "key", "value"),
    [
        ("small", "erasing", 1.5),
        ("small", "dense_dropout", 1),
        ("small", "erasing", "1"),
        ("resnet", "dropout", 1.0),
    ],
)
def test_a_rate_outside_zero_to_one_is_rejected(model, key, value):
    with pytest.raises(ValueError, match=f"'{key}' must be in \\[0, 1\\), got"):
        build_model(model, {key: value})


def test_models_command_prints_every_architecture_with_its_count():
    result = invoke_cli("models")
    assert result.exit_code == 0, result.stderr
    for name in MODEL_NAMES:
        assert name in result.stdout
    assert "2,055,306" in result.stdout
