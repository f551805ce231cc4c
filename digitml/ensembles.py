"""Ensembles: several copies of a network trained side by side, served as one averaged model.

`side_by_side` is what trains (each member its own loss, see `train.Crossentropy`); `averaged` is
what is tested, logged and served; `averaged_accuracy` is the training metric of an ensemble.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

from digitml.data import NUM_CLASSES
from digitml.models import INPUT_SHAPE

MEMBER_OUTPUTS = "stacked_probabilities"


def side_by_side(members: Sequence[keras.Model]) -> keras.Model:
    """An ensemble for training: the members, each from its own random start, see the same batches;
    the output stacks their probabilities, shape (batch, members, 10), so each member has its own
    loss (`train.Crossentropy`). `averaged` turns it into the model that is served."""
    inputs = keras.Input(INPUT_SHAPE)
    stacked = []
    for index, member in enumerate(members):
        member.name = f"member_{index}"
        stacked.append(layers.Reshape((1, NUM_CLASSES), dtype="float32")(member(inputs)))
    outputs = layers.Concatenate(axis=1, name=MEMBER_OUTPUTS, dtype="float32")(stacked)
    return keras.Model(inputs, outputs, name="ensemble")


def averaged(model: keras.Model) -> keras.Model:
    """The members of a `side_by_side` ensemble (same weights) with their probabilities averaged;
    any other model as it is."""
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if not members:
        return model
    inputs = keras.Input(INPUT_SHAPE)
    outputs = layers.Average(dtype="float32")([member(inputs) for member in members])
    return keras.Model(inputs, outputs, name=f"ensemble_of_{len(members)}")


def averaged_accuracy(labels: Any, member_probabilities: Any) -> Any:
    """Accuracy of the ensemble's averaged prediction: what `accuracy` means for an ensemble."""
    return keras.metrics.sparse_categorical_accuracy(
        labels, keras.ops.mean(member_probabilities, axis=1)
    )
