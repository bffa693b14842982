"""The compiled functions of stacked training, traced once per model and shared by every stack of it.

A stack's weights, FedProx anchors, SCAFFOLD corrections and optimizer state
are passed in and returned as tensors, not captured as variables: a graph that
captured one stack's variables served that stack only, so every stack and every
width traced its own (the CLI's 10 devices in stacks of 4, 3 and 3 traced twice
before round 1 could finish, each trace seconds of Python under the GIL).
:func:`program_for` keeps one :class:`StackProgram` per model structure,
optimizer, precision and XLA choice, in the whole process, so a second
federation of the same model (another dashboard session) traces nothing. For
dense-only models the device axis is unknown when traced, so one trace serves
every width; a convolutional model's program is per width (``StackKey.width``):
its grouped convolutions over an unknown number of devices ran ~4x slower.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import tensorflow as tf

from devices.stacked_layers import Conv, Pool, StackedOp, compiles_well, forward
from devices.stacked_optimizer import StackedOptimizer
from devices.trainer import SampleSpec, sample_losses, with_correction, with_proximal_term


class StackState(NamedTuple):
    """What one stack's training reads and changes, ``[width, ...]`` per weight; immutable tensors."""

    weights: list
    anchors: list  # FedProx's received weights
    corrections: list  # SCAFFOLD's c - c_i (zeros otherwise)
    proximal_mu: tf.Tensor
    iterations: tf.Tensor  # the optimizer's step count, shared by the stack
    learning_rate: tf.Tensor
    slots: list  # the optimizer's slots, in Keras's variable order


@dataclass(frozen=True)
class StackKey:
    """Everything a stack's compiled functions depend on: equal keys share one trace."""

    ops: tuple[StackedOp, ...]
    shapes: tuple[tuple[int, ...], ...]  # one device's weight shapes, in ``model.weights`` order
    samples: SampleSpec
    optimizer: StackedOptimizer
    compute_dtype: str
    xla: bool
    width: int | None = None  # None: traced once for every width (dense-only models); else stacks of this width


class StackProgram:
    """The compiled load, training and evaluation of stacks of one model, for any width."""

    def __init__(self, key: StackKey):
        self.key = key
        self.xla = key.xla and compiles_well(key.ops)
        stacked = [tf.TensorSpec([key.width, *shape], tf.float32) for shape in key.shapes]
        scalar = partial(tf.TensorSpec, [])
        slots = key.optimizer.slots_for(stacked)
        state = StackState(stacked, stacked, stacked, scalar(tf.float32), scalar(tf.int64), scalar(tf.float32), slots)
        images = tf.TensorSpec([None, *key.samples.shape], tf.as_dtype(key.samples.dtype))
        labels = tf.TensorSpec([None], key.samples.target_dtype)
        chunk = tf.TensorSpec([key.width, None, None], tf.int32)
        # no AutoGraph: no Python control flow over tensors, and converting the source took seconds of Python
        self.load = tf.function(
            self._load_impl, input_signature=[[tf.TensorSpec(s, tf.float32) for s in key.shapes], scalar(tf.int32)],
            autograph=False)
        # two variants, each traced when first needed: chunks where every device trains every step (IID data:
        # all of them) skip the per-step choice between updating all devices and only those still training
        signature = [images, labels, chunk, tf.TensorSpec(chunk.shape, tf.float32), scalar(tf.int32), state]
        self.train_chunk = {
            every: tf.function(partial(self._train_chunk_impl, every_step=every), input_signature=signature,
                               autograph=False)
            for every in (True, False)
        }
        # the step loop: XLA compiles it once per width and batch size
        self.train_steps = tf.function(self._train_steps_impl, jit_compile=self.xla, autograph=False)
        pairs = tf.TensorSpec([key.width, None], tf.int32)
        self.step_by_step = not self.xla and has_max_pooling(key.ops)
        step_signature = [images, labels, pairs, tf.TensorSpec(pairs.shape, tf.float32), state]
        self.train_one = {
            every: tf.function(partial(self._train_one_impl, every_step=every), input_signature=step_signature,
                               autograph=False)
            for every in (True, False)
        }
        self.evaluate_batch = tf.function(
            self._evaluate_batch_impl,
            input_signature=[images, labels, pairs, tf.TensorSpec(pairs.shape, tf.float32), stacked],
            autograph=False)

    def functions(self) -> list:
        """Every compiled function (for counting traces)."""
        return [self.load, self.train_steps, self.evaluate_batch, *self.train_chunk.values(),
                *self.train_one.values()]

    def run_chunk(self, every_step: bool, x, y, index, mask, num_steps: int, state: StackState):
        """``num_steps`` steps of the stack on the samples ``index`` ``[D, steps, B]`` picks from ``x``: the new
        weights, slots and step count, and per-device loss sums, correct and seen counts.

        One compiled loop, or one compiled call per step where a loop would cost more than the calls
        (:attr:`step_by_step`).
        """
        if not self.step_by_step:
            return self.train_chunk[every_step](x, y, index, mask, num_steps, state)
        weights, slots, iterations, counts = state.weights, state.slots, state.iterations, []
        for step in range(num_steps):
            weights, slots, iterations, *step_counts = self.train_one[every_step](
                x, y, index[:, step], mask[:, step], state._replace(weights=weights, slots=slots,
                                                                    iterations=iterations))
            counts.append(step_counts)
        return weights, slots, iterations, *(tf.add_n(list(parts)) for parts in zip(*counts))

    @staticmethod
    def _load_impl(weights, width):
        return [tf.broadcast_to(w, tf.concat([[width], tf.shape(w)], 0)) for w in weights]

    def losses(self, weights, images, labels, mask):
        """Per-sample loss ``[D, B]`` (masked) and score (correct, or absolute error) of each device's batch."""
        dtype = tf.as_dtype(self.key.compute_dtype)
        weights = weights if dtype == tf.float32 else [tf.cast(w, dtype) for w in weights]
        inputs = tf.cast(self.key.samples.scaled(images), dtype)
        outputs = tf.cast(forward(self.key.ops, weights, inputs), tf.float32)  # the loss is float32 in any precision
        per_sample, score = sample_losses(self.key.samples.task, outputs, labels)
        return per_sample * mask, score * mask

    def _train_chunk_impl(self, x, y, index, mask, num_steps, state, every_step):
        index, mask = tf.transpose(index, [1, 0, 2]), tf.transpose(mask, [1, 0, 2])  # step-major: contiguous steps
        return self.train_steps(tf.gather(x, index), tf.gather(y, index), mask, num_steps, state, every_step)

    def _train_steps_impl(self, images, labels, mask, num_steps, state, every_step):
        """``num_steps`` steps on ``images`` ``[steps, D, B, H, W]``: the new weights, slots and step count, and
        per-device loss sums, correct and seen counts."""

        def step_body(step, weights, slots, iterations, loss_total, correct_total, seen):
            weights, slots, iterations, loss_sums, correct, count = self._step(
                images[step], labels[step], mask[step], state, weights, slots, iterations, every_step)
            return (step + 1, weights, slots, iterations, loss_total + loss_sums, correct_total + correct,
                    seen + count)

        zeros = tf.zeros(tf.shape(mask)[1:2])
        _, weights, slots, iterations, loss_total, correct_total, seen = tf.while_loop(
            lambda step, *rest: step < num_steps, step_body,
            [tf.constant(0), list(state.weights), list(state.slots), state.iterations, zeros, zeros, zeros])
        return weights, slots, iterations, loss_total, correct_total, seen

    def _train_one_impl(self, x, y, index, mask, state, every_step):
        """One step on the samples ``index`` ``[D, B]`` picks, outside any loop (see :attr:`step_by_step`)."""
        return self._step(tf.gather(x, index), tf.gather(y, index), mask, state, list(state.weights),
                          list(state.slots), state.iterations, every_step)

    def _step(self, images, labels, mask, state, weights, slots, iterations, every_step):
        """One optimizer step of every device: new weights, slots, step count, and per-device loss sums,
        correct and seen counts of the batch."""
        count = tf.reduce_sum(mask, axis=1)
        with tf.GradientTape() as tape:
            tape.watch(weights)
            per_sample, correct = self.losses(weights, images, labels, mask)
            loss_sums = tf.reduce_sum(per_sample, axis=1)
            loss = tf.reduce_sum(loss_sums / tf.maximum(count, 1.0))
        # a gradient's static shape can come out less known than its weight's (a kernel with one input row
        # and one output: (None, None, 1) for (None, 1, 1)), which the loop would refuse as a changed shape
        gradients = [tf.ensure_shape(g, w.shape) for g, w in zip(tape.gradient(loss, weights), weights)]
        gradients = with_correction(gradients, state.corrections)
        gradients = with_proximal_term(gradients, weights, state.anchors, state.proximal_mu)
        slots, trained = self.key.optimizer.apply(iterations, state.learning_rate, slots, gradients, weights)
        if not every_step:  # a Python bool: which variant is being traced
            trained = only_training(trained, weights, count > 0)
        return trained, slots, iterations + 1, loss_sums, tf.reduce_sum(correct, axis=1), count

    def _evaluate_batch_impl(self, x, y, index, mask, weights):
        per_sample, correct = self.losses(weights, tf.gather(x, index), tf.gather(y, index), mask)
        return tf.reduce_sum(per_sample, axis=1), tf.reduce_sum(correct, axis=1)


def has_max_pooling(ops) -> bool:
    """Whether a stack of ``ops`` trains step by step, each step a compiled call, instead of in a compiled loop.

    Inside a loop, oneDNN's graph rewrite meets the loop's cycle and visits its nodes in an order that changes
    from one process to the next; when it reaches a max pooling's gradient before the pooling, the gradient
    stays on TensorFlow's own kernel, 3-5 ms slower per pooling and step (the default CNN's stack of 4 at
    bfloat16 took 18-21 ms per step instead of 12 in 9 processes of 14). A step outside a loop is rewritten
    whole every time; a call per step adds 1-2 ms of Python, which the other worker thread's stack overlaps.
    """
    pools = [op for op in ops if isinstance(op, Pool)] + [op.pool for op in ops if isinstance(op, Conv) and op.pool]
    return any(pool.kind == "max" for pool in pools)


def only_training(trained, before, training):
    """The step's weights for devices still training, the weights ``before`` it for those whose steps are done."""

    def keep_finished():
        kept = []
        for new, old in zip(trained, before):
            keep = tf.reshape(training, [-1] + [1] * (new.shape.rank - 1))
            kept.append(tf.where(keep, new, old))
        return kept

    return tf.cond(tf.reduce_all(training), lambda: list(trained), keep_finished)


_PROGRAMS: dict[StackKey, StackProgram] = {}
_PROGRAMS_LOCK = threading.Lock()


def program_for(key: StackKey) -> StackProgram:
    """The process's one program for ``key``, made the first time it is asked for."""
    with _PROGRAMS_LOCK:
        if key not in _PROGRAMS:
            _PROGRAMS[key] = StackProgram(key)
        return _PROGRAMS[key]
