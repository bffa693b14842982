"""Grouped convolutions and their stand-in where this CPU's TensorFlow kernels lack them (AVX2-only CPUs)."""

import numpy as np
import tensorflow as tf

from devices.stacked_layers import grouped_convolutions_train, grouped_kernel, per_group_conv2d


def test_one_convolution_per_group_is_each_devices_own_convolution():
    rng = np.random.default_rng(3)
    devices, channels, filters = 3, 2, 4
    images = rng.normal(size=(5, 7, 7, devices * channels)).astype(np.float32)
    kernels = rng.normal(size=(devices, 3, 3, channels, filters)).astype(np.float32)
    got = per_group_conv2d(tf.constant(images), grouped_kernel(tf.constant(kernels)), devices, 2, "SAME")
    for d in range(devices):
        own = tf.nn.conv2d(images[..., d * channels:(d + 1) * channels], kernels[d], 2, "SAME")
        np.testing.assert_allclose(got[..., d * filters:(d + 1) * filters], own, rtol=1e-5, atol=1e-5)


def test_the_probe_answers_the_same_inside_a_traced_function_as_outside():
    answer = grouped_convolutions_train()
    assert isinstance(answer, bool)
    assert bool(tf.function(lambda: tf.constant(grouped_convolutions_train()))()) is answer
