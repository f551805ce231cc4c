"""Ensembles: members side by side while training, one averaged model for serving."""

import keras
import numpy as np
import pytest

from digitml.ensembles import MEMBER_OUTPUTS, averaged, averaged_accuracy, side_by_side
from digitml.models import build_model

MEMBERS = 3
IMAGES = np.random.default_rng(0).random((16, 28, 28, 1)).astype("float32")


@pytest.fixture(scope="module")
def ensemble():
    """Three untrained baseline networks, each from its own random start."""
    keras.utils.set_random_seed(0)
    return side_by_side([build_model("baseline") for _ in range(MEMBERS)])


def members_of(model: keras.Model) -> list[keras.Model]:
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def test_side_by_side_stacks_each_members_probabilities(ensemble):
    stacked = np.asarray(ensemble.predict_on_batch(IMAGES))
    assert ensemble.layers[-1].name == MEMBER_OUTPUTS
    assert stacked.shape == (len(IMAGES), MEMBERS, 10)
    members = members_of(ensemble)
    assert [member.name for member in members] == ["member_0", "member_1", "member_2"]
    for index, member in enumerate(members):
        np.testing.assert_allclose(stacked[:, index], member.predict_on_batch(IMAGES), atol=1e-6)
    assert not np.allclose(stacked[:, 0], stacked[:, 1])


def test_averaged_serves_the_mean_of_the_members(ensemble):
    served = averaged(ensemble)
    assert served.output_shape == (None, 10)
    np.testing.assert_allclose(
        served.predict_on_batch(IMAGES),
        np.asarray(ensemble.predict_on_batch(IMAGES)).mean(axis=1),
        atol=1e-6,
    )


def test_a_single_network_is_served_as_it_is():
    network = build_model("baseline")
    assert averaged(network) is network


def test_an_averaged_ensemble_saves_and_loads_as_a_plain_keras_model(ensemble, tmp_path):
    served = averaged(ensemble)
    served.save(tmp_path / "ensemble.keras")
    loaded = keras.models.load_model(tmp_path / "ensemble.keras", compile=False)
    np.testing.assert_allclose(
        loaded.predict_on_batch(IMAGES), served.predict_on_batch(IMAGES), atol=1e-6
    )


def test_averaged_accuracy_scores_the_mean_prediction():
    """On each image one member is right and one wrong; their mean decides (0.45 on 0 against
    0.55 on 1), so the ensemble is wrong on the 0 and right on the 1."""
    labels = np.array([0, 1])
    mostly_0 = [0.9, 0.1] + [0.0] * 8
    surely_1 = [0.0, 1.0] + [0.0] * 8
    stacked = np.array([[mostly_0, surely_1], [surely_1, mostly_0]], dtype="float32")
    assert np.asarray(averaged_accuracy(labels, stacked)).tolist() == [0.0, 1.0]
