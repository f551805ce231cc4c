"""Precision: bfloat16 only where the CPU multiplies it, and a float32 copy for everything after."""

import platform
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from digitml.data import load_digits
from digitml.models import build_model
from digitml.precision import (
    auto_precision,
    cpu_flags,
    dtype_policy,
    float32_model,
    leaf_layers,
    resolve_precision,
)


def convolution_dtypes(model: keras.Model) -> set[str]:
    return {
        layer.compute_dtype
        for layer in leaf_layers(model)
        if isinstance(layer, keras.layers.Conv2D)
    }


def test_float32_copy_keeps_the_weights_and_the_answers():
    with dtype_policy("mixed_bfloat16"):
        model = build_model("vgg")
    copy = float32_model(model)
    assert convolution_dtypes(model) == {"bfloat16"} and convolution_dtypes(copy) == {"float32"}
    for original, copied in zip(model.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(original, copied)
    images = load_digits().test_images[:64]
    bf16 = np.asarray(model.predict_on_batch(images), np.float32)
    assert np.abs(bf16 - np.asarray(copy.predict_on_batch(images))).max() < 0.05


def test_a_float32_model_is_not_copied():
    model = build_model("baseline")
    assert float32_model(model) is model


def test_dtype_policy_is_restored_even_after_an_error():
    before = keras.config.dtype_policy().name
    with pytest.raises(RuntimeError), dtype_policy("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        raise RuntimeError("building failed")
    assert keras.config.dtype_policy().name == before


# Flags as /proc/cpuinfo lists them (abridged) on CPUs with and without native bfloat16.
SAPPHIRE_RAPIDS = {"fpu", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
COOPER_LAKE = {"fpu", "avx2", "avx512f", "avx512_bf16"}
SKYLAKE_SERVER = {"fpu", "avx2", "avx512f", "avx512bw", "avx512vl"}
EPYC_ROME = {"fpu", "avx2", "sha_ni", "clzero"}


@pytest.mark.parametrize(
    "flags, gpu, expected",
    [
        (SAPPHIRE_RAPIDS, False, "mixed_bfloat16"),
        (COOPER_LAKE, False, "mixed_bfloat16"),
        (SKYLAKE_SERVER, False, "float32"),
        (EPYC_ROME, False, "float32"),
        (SAPPHIRE_RAPIDS, True, "float32"),
        (set(), False, "float32"),
    ],
)
def test_auto_precision_picks_bfloat16_only_where_the_cpu_multiplies_it(flags, gpu, expected):
    assert auto_precision(flags, gpu) == expected


def test_explicit_precision_is_kept_and_auto_reads_this_machine():
    assert resolve_precision("float32") == "float32"
    assert resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    gpu = bool(tf.config.list_physical_devices("GPU"))
    assert resolve_precision("auto") == auto_precision(cpu_flags(), gpu) != "auto"
    if platform.machine() == "x86_64" and Path("/proc/cpuinfo").is_file():
        assert {"fpu", "sse2"} <= cpu_flags()  # every x86-64 CPU reports these
