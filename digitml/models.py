"""Architecture builders, registered by name. Each returns an uncompiled Keras model."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras
from keras import layers

from digitml.config import is_fraction
from digitml.data import IMAGE_SIZE, NUM_CLASSES

INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
# Keras' default 0.99 averages over ~100 steps: too slow for short runs (it collapsed accuracy).
BN_MOMENTUM = 0.9


def probabilities() -> layers.Layer:
    """The softmax output, kept in float32 under mixed precision so probabilities stay exact."""
    return layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32")


def dense_head(units: int, batch_norm: bool = True, dropout: float = 0.0) -> list[layers.Layer]:
    """Flatten, Dense [+BN] with ReLU, [Dropout], softmax: the classifier the Sequential nets end
    with."""
    head = [layers.Flatten(), layers.Dense(units, activation=None if batch_norm else "relu")]
    if batch_norm:
        head += [layers.BatchNormalization(momentum=BN_MOMENTUM), layers.Activation("relu")]
    if dropout:
        head.append(layers.Dropout(dropout))
    return head + [probabilities()]


# Of the image's area: patches of about 4 to 9 pixels a side, on 28x28 digits.
ERASED_AREA = (0.02, 0.1)


def erasing_layers(probability: float) -> list[layers.Layer]:
    """Random erasing (cutout): each training image's chance of a black patch. Inside the network
    rather than the input pipeline, so that ensemble members trained side by side can differ
    (an erasing member makes other mistakes than its plain twin); in training only: the served
    model passes images through."""
    if not probability:
        return []
    return [
        layers.RandomErasing(
            factor=(probability, probability),
            scale=ERASED_AREA,
            fill_value=0.0,
            value_range=(0, 1),
        )
    ]


def _applied(head: list[layers.Layer], tensor: Any) -> Any:
    """`tensor` through the layers in turn (a head in a functional model)."""
    for layer in head:
        tensor = layer(tensor)
    return tensor


def conv_net(
    conv1_filters: int = 32,
    conv2_filters: int = 64,
    dense_units: int = 128,
    batch_norm: bool = False,
    conv_dropout: float = 0.0,
    dense_dropout: float = 0.0,
) -> keras.Model:
    """Two Conv blocks (Conv [+BN] + MaxPool [+Dropout]), Dense [+Dropout], softmax."""
    model = keras.Sequential([keras.Input(INPUT_SHAPE)], name="conv_net")
    for filters in (conv1_filters, conv2_filters):
        model.add(layers.Conv2D(filters, 3, activation=None if batch_norm else "relu"))
        if batch_norm:
            model.add(layers.BatchNormalization(momentum=BN_MOMENTUM))
            model.add(layers.Activation("relu"))
        model.add(layers.MaxPooling2D())
        if conv_dropout:
            model.add(layers.Dropout(conv_dropout))
    for layer in dense_head(dense_units, batch_norm=False, dropout=dense_dropout):
        model.add(layer)
    return model


def _conv_bn(tensor: Any, filters: int, relu: bool = True) -> Any:
    tensor = layers.Conv2D(filters, 3, padding="same")(tensor)
    tensor = layers.BatchNormalization(momentum=BN_MOMENTUM)(tensor)
    return layers.Activation("relu")(tensor) if relu else tensor


def _residual_block(tensor: Any, filters: int) -> Any:
    """Two Conv+BN with the input added back, ReLU after the add."""
    shortcut = tensor
    tensor = _conv_bn(tensor, filters)
    tensor = _conv_bn(tensor, filters, relu=False)
    return layers.Activation("relu")(layers.Add()([tensor, shortcut]))


def resnet(
    stage_filters: Sequence[int] = (64, 128),
    dense_units: int = 256,
    dropout: float = 0.25,
    dense_dropout: float = 0.5,
) -> keras.Model:
    """The reference residual network: a Conv+BN stem per stage, a residual block, pool, dropout."""
    inputs = keras.Input(INPUT_SHAPE)
    tensor = inputs
    for filters in stage_filters:
        tensor = _conv_bn(tensor, filters)
        tensor = _residual_block(tensor, filters)
        tensor = layers.MaxPooling2D()(tensor)
        tensor = layers.Dropout(dropout)(tensor)
    outputs = _applied(dense_head(dense_units, dropout=dense_dropout), tensor)
    return keras.Model(inputs, outputs, name="resnet")


def vgg(
    stage_filters: Sequence[int] = (32, 64),
    convs_per_stage: int = 2,
    dense_units: int = 128,
    dropout: float = 0.1,
    dense_dropout: float = 0.3,
    conv_batch_norm: bool = True,
) -> keras.Model:
    """VGG-style stages of Conv [+BN] pairs and max-pooling, then a Dense+BN head (cheap BN)."""
    inputs = keras.Input(INPUT_SHAPE)
    tensor = inputs
    for filters in stage_filters:
        for _ in range(convs_per_stage):
            if conv_batch_norm:
                tensor = _conv_bn(tensor, filters)
            else:
                tensor = layers.Conv2D(filters, 3, padding="same", activation="relu")(tensor)
        tensor = layers.MaxPooling2D()(tensor)
        if dropout:
            tensor = layers.Dropout(dropout)(tensor)
    outputs = _applied(dense_head(dense_units, dropout=dense_dropout), tensor)
    return keras.Model(inputs, outputs, name="vgg")


def strided_net(
    conv1_filters: int = 32,
    conv1_kernel: int = 5,
    conv2_filters: int = 48,
    dense_units: int = 256,
    dense_batch_norm: bool = True,
    dense_dropout: float = 0.0,
    erasing: float = 0.0,
) -> keras.Model:
    """Fast CPU net: [random erasing], strided Conv (28->14), valid Conv3 + MaxPool (->6),
    Dense [+BN], softmax."""
    model = keras.Sequential(
        [keras.Input(INPUT_SHAPE), *erasing_layers(erasing)], name="strided_net"
    )
    model.add(
        layers.Conv2D(conv1_filters, conv1_kernel, strides=2, padding="same", activation="relu")
    )
    model.add(layers.Conv2D(conv2_filters, 3, activation="relu"))
    model.add(layers.MaxPooling2D())
    for layer in dense_head(dense_units, dense_batch_norm, dense_dropout):
        model.add(layer)
    return model


def stem_net(
    conv1_filters: int = 64,
    conv2_filters: int = 128,
    dense_units: int = 128,
    dense_dropout: float = 0.0,
    stem_filters: int = 32,
    erasing: float = 0.0,
) -> keras.Model:
    """A VGG-like stem (two Conv3 at full resolution, MaxPool -> 14), then Conv3 + MaxPool twice
    (-> 7 -> 3), Dense+BN. The full-resolution pair is what VGG gains over a strided first layer
    (validation 99.55 % against about 99.45 %). Kept narrow and fixed, with the searched widths at
    14 and 7 pixels, so the widest search candidate costs about what the strided net's does
    (39 against 32 s per epoch here); VGG pairs at those widths would cost about 12 times more."""
    model = keras.Sequential([keras.Input(INPUT_SHAPE), *erasing_layers(erasing)], name="stem_net")
    for _ in range(2):
        model.add(layers.Conv2D(stem_filters, 3, padding="same", activation="relu"))
    model.add(layers.MaxPooling2D())
    for filters in (conv1_filters, conv2_filters):
        model.add(layers.Conv2D(filters, 3, padding="same", activation="relu"))
        model.add(layers.MaxPooling2D())
    for layer in dense_head(dense_units, dropout=dense_dropout):
        model.add(layer)
    return model


# name -> (builder, the parameters that make it that architecture)
MODELS: dict[str, tuple[Callable[..., keras.Model], dict[str, Any]]] = {
    "baseline": (conv_net, {}),
    "regularized": (
        conv_net,
        {"batch_norm": True, "conv_dropout": 0.25, "dense_dropout": 0.5},
    ),
    "tuned": (
        conv_net,
        {"conv1_filters": 128, "conv2_filters": 192, "dense_units": 256, "dense_dropout": 0.5},
    ),
    "resnet": (resnet, {}),
    "small": (strided_net, {}),
    "vgg": (vgg, {"conv_batch_norm": False}),
    "stem": (stem_net, {}),
}
MODEL_NAMES = tuple(MODELS)
MODEL_DESCRIPTIONS = {
    "baseline": "simple CNN: Conv32-Pool-Conv64-Pool-Dense128",
    "regularized": "Conv+BN+Pool+Dropout25% blocks, Dense128+Dropout50%",
    "tuned": "reference tuner's best: Conv128-Conv192-Dense256",
    "resnet": "residual network, 64 then 128 filters, Dense256",
    "small": "fast recipe's net: strided Conv32-Conv48-Pool, Dense256+BN",
    "vgg": "VGG-style Conv pairs (32, 64), Dense128+BN head",
    "stem": "tune recipe's net: Conv32 pair, Conv64-Pool, Conv128-Pool, Dense128+BN",
}


# Builder parameters that are a rate or a chance: checked before any network is built.
FRACTION_PARAMS = ("dropout", "conv_dropout", "dense_dropout", "erasing")


def check_model_params(name: str, params: dict[str, Any]) -> None:
    """Raise ValueError if `params` holds a key the architecture's builder does not take, or a
    rate outside [0, 1)."""
    check_param_names(name, params)
    for key, value in params.items():
        if key in FRACTION_PARAMS and not is_fraction(value):
            raise ValueError(f"'{key}' must be in [0, 1), got {value!r}")


def check_param_names(name: str, keys: Iterable[str]) -> None:
    """Raise ValueError naming the first of `keys` that the architecture's builder does not take."""
    builder, _ = MODELS[name]
    accepted = inspect.signature(builder).parameters
    for key in keys:
        if key not in accepted:
            raise ValueError(f"'{key}' is not a parameter of {name} (takes: {', '.join(accepted)})")


def build_model(name: str, params: dict[str, Any] | None = None) -> keras.Model:
    """Build the named architecture, `params` overriding its registered defaults."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}' (known: {', '.join(MODEL_NAMES)})")
    builder, defaults = MODELS[name]
    check_model_params(name, params or {})
    return builder(**{**defaults, **(params or {})})


def parameter_counts() -> list[tuple[str, int, str]]:
    """(name, parameter count, description) for every registered architecture."""
    return [(name, build_model(name).count_params(), MODEL_DESCRIPTIONS[name]) for name in MODELS]
