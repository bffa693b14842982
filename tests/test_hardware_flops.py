"""CPU detection from /proc/cpuinfo text, and FLOP counts of Dense and Conv2D layers."""

import keras
import pytest

from engine.flops import forward_flops, layer_forward_flops, training_flops
from engine.hardware import cpu_info, parse_cpuinfo

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16
"""


def test_parse_cpuinfo_reads_model_flags_and_cores():
    info = parse_cpuinfo(CPUINFO)
    assert info.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert info.cores == 2
    assert info.native_bf16
    assert "avx512f avx512_bf16 amx_tile amx_bf16" in info.describe()


def test_a_cpu_without_bf16_units_is_not_native_bf16():
    assert not parse_cpuinfo(CPUINFO.replace(" avx512_bf16", "").replace(" amx_bf16", "")).native_bf16
    assert not parse_cpuinfo("").native_bf16


def test_unreadable_cpuinfo_means_unknown_and_float32(tmp_path):
    info = cpu_info(tmp_path / "missing")
    assert info.model == "unknown CPU" and not info.native_bf16


def test_dense_flops_are_two_per_multiply_add_plus_bias():
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(200), keras.layers.Dense(10, use_bias=False)])
    assert layer_forward_flops(model.layers[0]) == 2 * 784 * 200 + 200
    assert layer_forward_flops(model.layers[1]) == 2 * 200 * 10
    assert training_flops(model) == 3 * forward_flops(model)


def test_conv2d_flops_count_every_output_position():
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(32, 3), keras.layers.MaxPooling2D(),
                              keras.layers.Conv2D(64, 3, padding="same", use_bias=False)])
    assert layer_forward_flops(model.layers[0]) == 2 * 26 * 26 * 32 * 9 * 1 + 26 * 26 * 32
    assert layer_forward_flops(model.layers[1]) == 0
    assert layer_forward_flops(model.layers[2]) == 2 * 13 * 13 * 64 * 9 * 32


@pytest.mark.parametrize("name, low, high", [("cnn", 10e6, 30e6), ("mlp", 1.0e6, 1.4e6)])
def test_builtin_models_cost_what_the_issue_estimates(name, low, high):
    from engine.models import ModelRegistry

    model = ModelRegistry().build(name, (28, 28, 1), 10)
    assert low < training_flops(model) < high
