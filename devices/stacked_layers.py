"""A Keras ``Sequential`` model computed for a stack of devices at once, each with its own weights.

The activations of a stack of ``D`` devices live in one of two layouts:

- spatial ``[batch, height, width, D * channels]``, device ``d`` owning channels
  ``d*C:(d+1)*C``, so one convolution with ``D`` groups applies every device's
  own kernel to its own images, and pooling works per channel as it is;
- flat ``[D, batch, features]``, so a dense layer is one batched matmul.

Every weight is stacked along a new leading axis of size ``D``, in the order of
``model.weights``. :func:`stack_plan` reads the layers once; :func:`forward`
runs them. Layers whose training differs from one device to the next in ways
this cannot reproduce (dropout masks, batch statistics) or that this does not
cover make the model "not stackable": its devices are then trained one by one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

ELEMENTWISE_ACTIVATIONS = frozenset(
    {"linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "sigmoid", "tanh", "swish", "silu", "softplus"}
)
# non-decreasing, so a max pooling gives the same result before them as after (gelu and swish dip below zero)
MONOTONIC_ACTIVATIONS = frozenset({"linear", "relu", "relu6", "leaky_relu", "elu", "selu", "sigmoid", "tanh",
                                   "softplus"})


class NotStackable(ValueError):
    """The model cannot be trained as a stack; the message says which layer and why."""


@dataclass(frozen=True)
class Pool:
    kind: str  # "max" or "avg"
    size: tuple[int, int]
    strides: tuple[int, int]
    padding: str


@dataclass(frozen=True)
class Conv:
    kernel: int  # index into the stacked weights
    bias: int | None
    strides: tuple[int, int]
    padding: str
    activation: Callable
    # the max pooling right after this layer, computed before the bias and the activation (see ``pooled_first``)
    pool: Pool | None = None


@dataclass(frozen=True)
class Flatten:
    pass


@dataclass(frozen=True)
class Dense:
    kernel: int
    bias: int | None
    activation: Callable


@dataclass(frozen=True)
class Activation:
    activation: Callable


StackedOp = Conv | Pool | Flatten | Dense | Activation


def _activation(layer, layout: str) -> Callable:
    name = getattr(layer.activation, "__name__", str(layer.activation))
    if layout == "flat" and name == "softmax":
        return layer.activation
    if name not in ELEMENTWISE_ACTIVATIONS:
        raise NotStackable(f"layer {layer.name!r}: activation {name!r} is not element-wise")
    return layer.activation


def stack_plan(model: keras.Model) -> tuple[StackedOp, ...]:
    """Translate ``model`` into stacked operations, or raise :class:`NotStackable` saying why."""
    if not isinstance(model, keras.Sequential):
        raise NotStackable(f"model {model.name!r} is not a keras.Sequential")
    if len(model.input_shape) == 4 and model.input_shape[-1] != 1:
        raise NotStackable("only single-channel image inputs are stacked (colour images train one by one)")
    index = {id(w): i for i, w in enumerate(model.weights)}
    if any(not w.trainable for w in model.weights):
        raise NotStackable(f"model {model.name!r} has non-trainable weights (e.g. batch statistics)")
    ops: list[StackedOp] = []
    layout = "spatial"
    for layer in model.layers:
        if getattr(layer, "dtype_policy", None) is not None and layer.compute_dtype != "float32":
            raise NotStackable(f"layer {layer.name!r} computes in {layer.compute_dtype}, not float32")
        bias = index[id(layer.bias)] if getattr(layer, "use_bias", False) else None
        if isinstance(layer, keras.layers.Conv2D) and type(layer) is keras.layers.Conv2D:
            if layout != "spatial" or layer.groups != 1 or tuple(layer.dilation_rate) != (1, 1):
                raise NotStackable(f"layer {layer.name!r}: only plain, ungrouped 2-D convolutions on images")
            if layer.data_format != "channels_last":
                raise NotStackable(f"layer {layer.name!r}: only channels_last convolutions")
            ops.append(Conv(index[id(layer.kernel)], bias, tuple(layer.strides), layer.padding.upper(),
                            _activation(layer, layout)))
        elif isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
            if layout != "spatial" or layer.data_format != "channels_last":
                raise NotStackable(f"layer {layer.name!r}: pooling only on channels_last images")
            kind = "max" if isinstance(layer, keras.layers.MaxPooling2D) else "avg"
            pool = Pool(kind, tuple(layer.pool_size), tuple(layer.strides), layer.padding.upper())
            if ops and pooled_first(ops[-1], pool):
                ops[-1] = replace(ops[-1], pool=pool)
            else:
                ops.append(pool)
        elif isinstance(layer, keras.layers.Flatten):
            ops.append(Flatten())
            layout = "flat"
        elif type(layer) is keras.layers.Dense:
            if layout != "flat" or getattr(layer, "lora_enabled", False):
                raise NotStackable(f"layer {layer.name!r}: dense layers only after Flatten, without LoRA")
            ops.append(Dense(index[id(layer.kernel)], bias, _activation(layer, layout)))
        elif isinstance(layer, keras.layers.Activation):
            ops.append(Activation(_activation(layer, layout)))
        else:
            raise NotStackable(f"layer {layer.name!r} ({type(layer).__name__}) is not supported in a stack")
    if layout != "flat":
        raise NotStackable(f"model {model.name!r} does not end in flat logits")
    return tuple(ops)


def pooled_first(previous: StackedOp, pool: Pool) -> bool:
    """Whether ``pool`` can run on ``previous``'s convolution before its bias and activation.

    A max pooling commutes with adding a per-channel bias and with a non-decreasing activation, so pooling
    first gives the same outputs while the bias's and the activation's gradients run on a quarter of the
    values (2x2 pooling): for the default CNN's stack of 4 at bfloat16, the bias-gradient sums and ReLU
    gradients took 6.3 ms of thread time per step, 2.9 ms with pooling first (the bias add and ReLU included).
    Only the rare ties a bias's rounding creates can route a gradient to another of the tied pixels.
    """
    return (isinstance(previous, Conv) and previous.pool is None and pool.kind == "max"
            and getattr(previous.activation, "__name__", "") in MONOTONIC_ACTIVATIONS)


def compiles_well(ops: Sequence[StackedOp]) -> bool:
    """Whether XLA can speed up a stacked step: ~1.4x per round for dense-only models on CPU
    (``benchmarks/engine_vs_fit --xla``), but grouped convolutions compiled by XLA run ~20x slower
    than TensorFlow's own kernels."""
    return not any(isinstance(op, Conv) for op in ops)


def grouped_kernel(kernel: tf.Tensor) -> tf.Tensor:
    """``[D, kh, kw, C, K]`` per-device kernels as one ``[kh, kw, C, D*K]`` kernel with D groups."""
    devices, kh, kw, channels, filters = kernel.shape
    return tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [kh, kw, channels, devices * filters])


@functools.cache
def grouped_convolutions_train() -> bool:
    """Whether this TensorFlow build computes a grouped convolution and its gradients correctly on this CPU.

    With oneDNN (on by default only on CPUs with AVX-512 VNNI/BF16 or AMX) it does; TensorFlow's own
    kernels, which AVX2-only CPUs get, compute the forward pass but their filter gradient ignores the
    groups and fails ("filter_size does not have enough elements"). Checked once per process on a tiny
    example against one convolution per group, eagerly even when first asked while a function is traced.
    """
    with tf.init_scope():
        return _grouped_matches_per_group()


def _grouped_matches_per_group() -> bool:
    """The forward pass and the filter gradient of 2 groups, each against the plain convolution of its group
    (raw ops, not a gradient tape: tapes are paused inside ``init_scope``)."""
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(2, 5, 5, 4)), tf.float32)  # 2 groups of 2 channels
    kernel = tf.constant(rng.normal(size=(3, 3, 2, 6)), tf.float32)  # 3 filters per group
    upstream = tf.constant(rng.normal(size=(2, 5, 5, 6)), tf.float32)

    def filter_gradient(x, k, dy):
        return tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(k), out_backprop=dy,
                                               strides=[1, 1, 1, 1], padding="SAME")

    try:
        grouped = [tf.nn.conv2d(images, kernel, 1, "SAME"), filter_gradient(images, kernel, upstream)]
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        return False
    groups = zip(tf.split(images, 2, -1), tf.split(kernel, 2, -1), tf.split(upstream, 2, -1))
    split = [tf.concat(parts, -1) for parts in
             zip(*[(tf.nn.conv2d(x, k, 1, "SAME"), filter_gradient(x, k, dy)) for x, k, dy in groups])]
    return all(np.allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4) for a, b in zip(grouped, split))


def per_group_conv2d(h: tf.Tensor, kernel: tf.Tensor, groups: int, strides, padding: str) -> tf.Tensor:
    """The grouped convolution as one plain convolution per group, its outputs side by side: the same
    result where grouped kernels are missing (:func:`grouped_convolutions_train`)."""
    inputs = tf.split(h, groups, axis=-1)
    kernels = tf.split(kernel, groups, axis=-1)
    return tf.concat([tf.nn.conv2d(x, k, strides, padding) for x, k in zip(inputs, kernels)], axis=-1)


def spatial_to_flat(h: tf.Tensor, devices: int) -> tf.Tensor:
    """``[B, H, W, D*C]`` to ``[D, B, H*W*C]``, each device's features in Keras ``Flatten`` order."""
    _, height, width, channels = h.shape
    batch = tf.shape(h)[0]
    h = tf.reshape(h, [batch, height, width, devices, channels // devices])
    return tf.reshape(tf.transpose(h, [3, 0, 1, 2, 4]), [devices, batch, height * width * channels // devices])


def pooled(h: tf.Tensor, pool: Pool) -> tf.Tensor:
    function = tf.nn.max_pool2d if pool.kind == "max" else tf.nn.avg_pool2d
    return function(h, pool.size, pool.strides, pool.padding)


def forward(ops: Sequence[StackedOp], weights: Sequence[tf.Tensor], images: tf.Tensor) -> tf.Tensor:
    """Outputs ``[D, B, classes]`` of each device's model on its own images ``[D, B, H, W]`` (or rows
    ``[D, B, features]``, when the model starts with ``Flatten``)."""
    devices = images.shape[0] or tf.shape(images)[0]  # unknown when traced for every stack width (dense-only)
    h, device_major = images, True  # [D, B, H, W] until the first spatial layer or Flatten
    for op in ops:
        if isinstance(op, (Conv, Pool)) and device_major:
            h, device_major = tf.transpose(h, [1, 2, 3, 0]), False  # spatial layout, one channel per device
        if isinstance(op, Conv):
            kernel = grouped_kernel(weights[op.kernel])
            if devices == 1 or grouped_convolutions_train():
                h = tf.nn.conv2d(h, kernel, op.strides, op.padding)
            else:
                h = per_group_conv2d(h, kernel, devices, op.strides, op.padding)
            if op.pool is not None:
                h = pooled(h, op.pool)
            if op.bias is not None:
                h = tf.nn.bias_add(h, tf.reshape(weights[op.bias], [-1]))
            h = op.activation(h)
        elif isinstance(op, Pool):
            h = pooled(h, op)
        elif isinstance(op, Flatten):
            if device_major:
                h, device_major = tf.reshape(h, [devices, tf.shape(h)[1], -1]), False
            elif h.shape.rank == 4:
                h = spatial_to_flat(h, devices)
        elif isinstance(op, Dense):
            h = tf.matmul(h, weights[op.kernel])  # batched: one [B, I] x [I, O] per device
            if op.bias is not None:
                h = h + weights[op.bias][:, None, :]
            h = op.activation(h)
        else:
            h = op.activation(h)
    return h
