"""How much arithmetic a model is: floating-point operations per sample, counted from its layers.

Used by the benchmarks to turn seconds into GFLOP/s, so the distance to what
the hardware can do is visible next to every ratio. A multiply-add counts as
two operations. Training a sample costs about three forward passes (forward,
gradient with respect to the activations, gradient with respect to the
weights), the usual estimate (Kaplan et al. 2020).
"""

from __future__ import annotations

import math

import keras

TRAINING_PASSES = 3


def layer_forward_flops(layer: keras.layers.Layer) -> int:
    """Forward FLOPs per sample of one layer: its matmuls and convolutions (2 per multiply-add) plus its bias adds.

    Layers without weights (pooling, flatten, activations) are counted as free:
    they are a rounding error next to the convolutions and matmuls.
    """
    if isinstance(layer, keras.layers.Conv2D):
        out_h, out_w, filters = layer.output.shape[1:]
        kh, kw = layer.kernel_size
        in_channels = layer.kernel.shape[2]
        outputs = out_h * out_w * filters
        return 2 * outputs * kh * kw * in_channels // layer.groups + outputs * layer.use_bias
    if isinstance(layer, keras.layers.Dense):
        units_in, units_out = layer.kernel.shape
        rows = math.prod(layer.input.shape[1:-1])  # a Dense applied to a sequence or an image runs per position
        return rows * (2 * units_in * units_out + units_out * layer.use_bias)
    return 0


def forward_flops(model: keras.Model) -> int:
    """Forward FLOPs per sample of a built model, summed over its layers."""
    return sum(layer_forward_flops(layer) for layer in model.layers)


def training_flops(model: keras.Model) -> int:
    """FLOPs of one training step per sample (forward and backward)."""
    return TRAINING_PASSES * forward_flops(model)
