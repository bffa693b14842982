"""Mixed precision for a device's model: compute in bfloat16, keep float32 master weights.

Keras's ``mixed_bfloat16`` policy stores every variable in float32 and runs
the layers in bfloat16; the loss is computed on float32 logits. No loss
scaling is needed: bfloat16 has float32's exponent range. The model is
re-created layer by layer with the policy (no global Keras state is touched,
so other threads' models are unaffected).
"""

from __future__ import annotations

import keras
import tensorflow as tf

TRAINING_PRECISIONS = ("float32", "bfloat16")
MIXED_POLICY = "mixed_bfloat16"


def compute_dtype(precision: str) -> tf.DType:
    """The dtype a device's layers compute in for ``precision`` (``float32`` or ``bfloat16``)."""
    if precision not in TRAINING_PRECISIONS:
        raise ValueError(f"training precision must be one of {', '.join(TRAINING_PRECISIONS)}, got {precision!r}")
    return tf.bfloat16 if precision == "bfloat16" else tf.float32


def in_precision(model: keras.Model, precision: str) -> keras.Model:
    """``model`` itself for float32; for bfloat16 a copy (same weights) whose layers use ``mixed_bfloat16``."""
    if compute_dtype(precision) == tf.float32:
        return model

    def with_policy(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        config["dtype"] = MIXED_POLICY
        return layer.__class__.from_config(config)

    mixed = keras.models.clone_model(model, clone_function=with_policy)
    mixed.set_weights(model.get_weights())
    return mixed
