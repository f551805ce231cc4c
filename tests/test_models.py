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
    assert model.output_shape == (None, 10)


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


def test_models_command_prints_every_architecture_with_its_count():
    result = invoke_cli("models")
    assert result.exit_code == 0, result.stderr
    for name in MODEL_NAMES:
        assert name in result.stdout
    assert "2,055,306" in result.stdout
