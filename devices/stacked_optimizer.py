"""A stack's local optimizer as a pure function: its state goes in and comes out as tensors.

A Keras optimizer owns variables of one fixed shape, so a compiled step that
uses one is tied to that one stack: every stack, and every stack width, traced
its own graphs (seconds of Python each, before round 1 could train). Written
as a function of the state (the step count, the learning rate and the slots:
SGD's momentum, or Adam's first and second moments interleaved per weight, in
the order of the Keras optimizer's variables), one trace serves stacks of any
width. The arithmetic is Keras's own ``update_step``, op for op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import keras
import tensorflow as tf

from devices.trainer import OptimizerSpec


@dataclass(frozen=True)
class StackedOptimizer:
    """SGD (with or without momentum) or Adam, as the :class:`OptimizerSpec`'s Keras optimizer configures them."""

    adam: bool
    momentum: float = 0.0
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7

    @classmethod
    def of(cls, spec: OptimizerSpec) -> "StackedOptimizer":
        """The hyper-parameters of ``spec.build()``, so a stack trains with exactly the one-by-one optimizer."""
        built = spec.build()
        if isinstance(built, keras.optimizers.Adam) and not built.amsgrad:
            return cls(True, beta_1=built.beta_1, beta_2=built.beta_2, epsilon=built.epsilon)
        if isinstance(built, keras.optimizers.SGD) and not built.nesterov:
            return cls(False, momentum=built.momentum)
        raise ValueError(f"optimizer {spec.name!r} has no stacked form")

    @property
    def slots_per_weight(self) -> int:
        return 2 if self.adam else int(self.momentum != 0)

    def slot_betas(self, weights: int) -> list[float | None]:
        """The decay whose bias correction each slot has (``devices.optimizer_state.stack_states``)."""
        return [self.beta_1, self.beta_2] * weights if self.adam else [None] * (self.slots_per_weight * weights)

    def slots_for(self, weights: Sequence) -> list:
        """One entry per slot: the weight (a tensor or its spec) it belongs to, in the Keras optimizer's order
        (each weight's slots together)."""
        return [w for w in weights for _ in range(self.slots_per_weight)]

    def fresh_slots(self, weights: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """All-zero slots for ``weights``."""
        return [tf.zeros_like(w) for w in self.slots_for(weights)]

    def apply(self, iterations, learning_rate, slots, gradients, weights) -> tuple[list, list]:
        """One step at step count ``iterations`` (before this step): the new slots and the new weights."""
        new_slots, new_weights = [], []
        per = self.slots_per_weight
        for i, (gradient, weight) in enumerate(zip(gradients, weights)):
            own = slots[i * per:(i + 1) * per]
            updated, weight = (self._adam if self.adam else self._sgd)(iterations, learning_rate, own, gradient,
                                                                         weight)
            new_slots.extend(updated)
            new_weights.append(weight)
        return new_slots, new_weights

    def _sgd(self, iterations, learning_rate, slots, gradient, weight):
        """Keras's ``SGD.update_step``."""
        learning_rate = tf.cast(learning_rate, weight.dtype)
        gradient = tf.cast(gradient, weight.dtype)
        if not slots:
            return [], weight - gradient * learning_rate
        momentum = slots[0] * tf.cast(self.momentum, weight.dtype) - gradient * learning_rate
        return [momentum], weight + momentum

    def _adam(self, iterations, learning_rate, slots, gradient, weight):
        """Keras's ``Adam.update_step`` (without AMSGrad)."""
        dtype = weight.dtype
        lr = tf.cast(learning_rate, dtype)
        gradient = tf.cast(gradient, dtype)
        local_step = tf.cast(iterations + 1, dtype)
        beta_1_power = tf.pow(tf.cast(self.beta_1, dtype), local_step)
        beta_2_power = tf.pow(tf.cast(self.beta_2, dtype), local_step)
        m, v = slots
        alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        m = m + (gradient - m) * tf.constant(1 - self.beta_1, dtype)
        v = v + (tf.square(gradient) - v) * tf.constant(1 - self.beta_2, dtype)
        return [m, v], weight - (m * alpha) / (tf.sqrt(v) + tf.constant(self.epsilon, dtype))
