"""Train a stack of devices as one computation: per-device weights stacked, batches trained side by side.

Every weight of the model gets a leading axis, one slot per device, and one
compiled step runs all devices' batches through grouped convolutions and
batched matmuls (:mod:`devices.stacked_layers`). The loss is the sum of the
devices' own mean losses, so each device's gradient is exactly its own; the
optimizer's update is element-wise, so stacking the variables stacks
independent optimizers. Devices with fewer local steps than the others keep
their weights once their steps are done, and a short last batch is masked, so
the result equals training each device on its own (``tests/test_stacked.py``).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from devices.messages import Weights
from devices.optimizer_state import OptimizerState, device_states, stack_states
from devices.precision import compute_dtype
from devices.stacked_layers import compiles_well, forward, stack_plan
from devices.trainer import (
    EVAL_BATCH,
    KERAS_RNG_LOCK,
    LocalOptimizer,
    ModelBuilder,
    OptimizerSpec,
    SampleSpec,
    TrainResult,
    batch_plan,
    batches_per_epoch,
    sample_losses,
    with_correction,
    with_proximal_term,
)

BATCH_WIDTH_MULTIPLE = 8  # a short batch runs at its real rows rounded up to this
Samples = tuple[np.ndarray, np.ndarray]  # stored samples (n, ...) and targets (n,)
StackCheckpoint = Callable[[int], None]  # called with the steps the stack has done, between chunks


def stacked_batches(
    plans: Sequence[np.ndarray], offsets: Sequence[int], multiple_of: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Per-device batch plans as one index ``[devices, steps, batch]`` into the concatenated samples, and its mask.

    Devices with fewer steps are padded with empty (fully masked) steps, up to
    a multiple of ``multiple_of`` steps.
    """
    steps = -(-max(len(p) for p in plans) // multiple_of) * multiple_of
    batch = plans[0].shape[1]
    index = np.zeros((len(plans), steps, batch), np.int32)
    mask = np.zeros((len(plans), steps, batch), np.float32)
    for d, (plan, offset) in enumerate(zip(plans, offsets)):
        real = plan >= 0
        index[d, : len(plan)] = np.where(real, plan + offset, 0)
        mask[d, : len(plan)] = real
    return index, mask


def narrow_chunks(mask: np.ndarray, max_steps: int, multiple: int = BATCH_WIDTH_MULTIPLE) -> list[tuple[int, int, int]]:
    """Runs of consecutive steps of ``mask`` ``[devices, steps, batch]`` that need the same batch width, each
    cut into pieces of at most ``max_steps``: ``(first step, steps, width)``.

    A step's width is its most-filled device's real rows (rows are filled from the front), rounded up to a
    ``multiple`` so that a few shapes recur; the rows beyond it are masked in every device, so leaving them
    out changes no loss, gradient or count.
    """
    batch = mask.shape[2]
    needed = mask.sum(axis=2).max(axis=0) if mask.shape[1] else np.zeros(0)
    widths = [int(min(batch, max(multiple, -(-int(n) // multiple) * multiple))) for n in needed]
    chunks: list[tuple[int, int, int]] = []
    for step, width in enumerate(widths):
        if chunks and chunks[-1][2] == width and chunks[-1][1] < max_steps:
            first, count, _ = chunks[-1]
            chunks[-1] = (first, count + 1, width)
        else:
            chunks.append((step, 1, width))
    return chunks


def in_order(num_samples: int, batch_size: int) -> np.ndarray:
    """Every sample once, in order, as ``[batches, batch_size]`` with -1 padding (for evaluation)."""
    plan = np.full(batches_per_epoch(num_samples, batch_size) * batch_size, -1, np.int32)
    plan[:num_samples] = np.arange(num_samples)
    return plan.reshape(-1, batch_size)


def concatenated(samples: Sequence[Samples], target_dtype=np.int32) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """All devices' samples in one array each, and where each device's samples start."""
    offsets = np.cumsum([0] + [len(y) for _, y in samples[:-1]]).tolist()
    targets = np.concatenate([y for _, y in samples]).astype(target_dtype)
    return np.concatenate([x for x, _ in samples]), targets, offsets


class StackedReplica:
    """``width`` devices' copies of one model, trained together; reused across rounds like ``ModelReplica``."""

    def __init__(
        self, build_model: ModelBuilder, optimizer: OptimizerSpec, width: int, steps_per_call: int = 25,
        xla: bool = False, samples: SampleSpec | None = None, precision: str = "float32",
    ):
        """``xla`` compiles the step loop with XLA where that helps (dense-only models): faster rounds
        after a compile of a few seconds per width. ``samples`` as for ``ModelReplica``. ``precision``
        ``bfloat16`` computes in bfloat16 on float32 master weights (mixed precision)."""
        with KERAS_RNG_LOCK:
            template = build_model()
        self._compute_dtype = compute_dtype(precision)
        self.samples = samples or SampleSpec.for_model(template)
        self.width = width
        self.steps_per_call = steps_per_call
        self._ops = stack_plan(template)
        self._variables = [tf.Variable(tf.zeros([width, *w.shape])) for w in template.weights]
        self._anchors = [tf.Variable(tf.zeros([width, *w.shape]), trainable=False) for w in template.weights]
        self._proximal_mu = tf.Variable(0.0, trainable=False)
        self._corrections = [tf.Variable(tf.zeros([width, *w.shape]), trainable=False) for w in template.weights]
        self._corrections_zero = True  # skip re-zeroing them for every stack of a round without SCAFFOLD
        self.optimizer = LocalOptimizer(optimizer, self._variables)
        # no AutoGraph: these functions have no Python control flow over tensors, and converting their source
        # (and what they call) took most of the first trace in a process: ~2-4 s of pure Python before round 1
        self._load = tf.function(
            self._load_impl, input_signature=[[tf.TensorSpec(w.shape, tf.float32) for w in template.weights]],
            autograph=False,
        )
        images = tf.TensorSpec([None, *self.samples.shape], tf.as_dtype(self.samples.dtype))
        labels = tf.TensorSpec([None], self.samples.target_dtype)
        chunk = tf.TensorSpec([width, None, None], tf.int32)
        signature = [images, labels, chunk, tf.TensorSpec(chunk.shape, tf.float32), tf.TensorSpec([], tf.int32)]
        # two variants, each traced when first needed: chunks where every device trains every step (IID data:
        # all of them) skip the per-step choice between updating all devices and only those still training
        self._train_chunk = {
            every: tf.function(partial(self._train_chunk_impl, every_step=every), input_signature=signature,
                               autograph=False)
            for every in (True, False)
        }
        # the step loop sees only fixed shapes, so XLA compiles it once per width and batch size
        self._xla = xla and compiles_well(self._ops)
        self._train_steps = tf.function(self._train_steps_impl, jit_compile=self._xla, autograph=False)
        self._evaluate_batch = tf.function(
            self._evaluate_batch_impl,
            input_signature=[images, labels, tf.TensorSpec([width, None], tf.int32),
                             tf.TensorSpec([width, None], tf.float32)],
            autograph=False,
        )

    # -- weights -------------------------------------------------------------
    def load(self, weights: Weights) -> None:
        """Every device starts from ``weights``, which are also FedProx's anchor (one compiled call)."""
        self._load([np.asarray(value, np.float32) for value in weights])

    def _load_impl(self, weights):
        for variable, anchor, value in zip(self._variables, self._anchors, weights):
            stacked = tf.broadcast_to(value, variable.shape)
            variable.assign(stacked)
            anchor.assign(stacked)

    def load_each(self, starts: Sequence[Weights], anchors: Sequence[Weights]) -> None:
        """Device ``d`` starts from ``starts[d]`` (personalisation: its own model), with ``anchors[d]`` as the
        anchor of its proximal term."""
        for layer, (variable, anchor) in enumerate(zip(self._variables, self._anchors)):
            variable.assign(np.stack([np.asarray(start[layer], np.float32) for start in starts]))
            anchor.assign(np.stack([np.asarray(a[layer], np.float32) for a in anchors]))

    def _load_corrections(self, corrections: Sequence[Weights | None]) -> None:
        """SCAFFOLD's per-device corrections; all None (every other strategy) keeps them at zero."""
        none = all(c is None for c in corrections)
        if none and self._corrections_zero:
            return
        self._corrections_zero = none
        for layer, variable in enumerate(self._corrections):
            variable.assign(np.stack([
                np.zeros(variable.shape[1:], np.float32) if c is None else np.asarray(c[layer], np.float32)
                for c in corrections
            ]))

    @property
    def variables(self) -> list[tf.Variable]:
        """The stacked weights, ``[width, *shape]`` each, in ``model.weights`` order."""
        return self._variables

    def get_weights(self) -> list[Weights]:
        """Each device's weights, in ``model.weights`` order."""
        arrays = [v.numpy() for v in self._variables]
        return [[array[d] for array in arrays] for d in range(self.width)]

    def reset_optimizer(self, learning_rate: float, states: Sequence[OptimizerState | None] | None = None) -> None:
        """Fresh optimizers, or each device's kept state (``states[d]``, None: fresh) in its slot."""
        if states is None:
            self.optimizer.reset(learning_rate)
            return
        fresh = self.optimizer.fresh_state
        one_device = [fresh[0]] + [slot[0] for slot in fresh[1:]]
        self.optimizer.reset(learning_rate, stack_states(states, one_device, self.optimizer.slot_betas))

    def optimizer_states(self) -> list[OptimizerState]:
        """Each device's optimizer state after training (the stack's step count, its own slots)."""
        return device_states(self.optimizer.state(), self.width)

    # -- compiled steps --------------------------------------------------------
    def _losses(self, images, labels, mask):
        """Per-sample loss ``[D, B]`` (masked) and score (correct, or absolute error) of each device's batch."""
        dtype = self._compute_dtype
        weights = self._variables if dtype == tf.float32 else [tf.cast(v, dtype) for v in self._variables]
        inputs = tf.cast(self.samples.scaled(images), dtype)
        outputs = tf.cast(forward(self._ops, weights, inputs), tf.float32)  # the loss is float32 in any precision
        per_sample, score = sample_losses(self.samples.task, outputs, labels)
        return per_sample * mask, score * mask

    def _train_chunk_impl(self, x, y, index, mask, num_steps, every_step):
        index, mask = tf.transpose(index, [1, 0, 2]), tf.transpose(mask, [1, 0, 2])  # step-major: contiguous steps
        return self._train_steps(tf.gather(x, index), tf.gather(y, index), mask, num_steps, every_step)

    def _train_steps_impl(self, images, labels, mask, num_steps, every_step):
        """``num_steps`` steps on ``images`` ``[steps, D, B, H, W]``; per-device loss sums, correct and seen counts."""
        variables = self._variables

        def step_body(step, loss_total, correct_total, seen):
            count = tf.reduce_sum(mask[step], axis=1)
            with tf.GradientTape() as tape:
                per_sample, correct = self._losses(images[step], labels[step], mask[step])
                loss_sums = tf.reduce_sum(per_sample, axis=1)
                loss = tf.reduce_sum(loss_sums / tf.maximum(count, 1.0))
            gradients = with_correction(tape.gradient(loss, variables), self._corrections)
            gradients = with_proximal_term(gradients, variables, self._anchors, self._proximal_mu)
            if every_step:  # a Python bool: which variant is being traced
                self.optimizer.apply(gradients, variables)
            else:
                self._apply(gradients, training=count > 0)
            return step + 1, loss_total + loss_sums, correct_total + tf.reduce_sum(correct, axis=1), seen + count

        zeros = tf.zeros([self.width])
        _, loss_total, correct_total, seen = tf.while_loop(
            lambda step, *totals: step < num_steps, step_body, [tf.constant(0), zeros, zeros, zeros])
        return loss_total, correct_total, seen

    def _apply(self, gradients, training):
        """Apply the step; devices whose local steps are all done keep their weights."""

        def apply_to_all():
            self.optimizer.apply(gradients, self._variables)
            return tf.constant(True)

        def apply_to_training():
            before = [tf.identity(v) for v in self._variables]
            self.optimizer.apply(gradients, self._variables)
            for variable, old in zip(self._variables, before):
                keep = tf.reshape(training, [self.width] + [1] * (variable.shape.rank - 1))
                variable.assign(tf.where(keep, variable, old))
            return tf.constant(True)

        # an explicit cond: AutoGraph does not always convert methods called from the compiled loop
        tf.cond(tf.reduce_all(training), apply_to_all, apply_to_training)

    def _evaluate_batch_impl(self, x, y, index, mask):
        per_sample, correct = self._losses(tf.gather(x, index), tf.gather(y, index), mask)
        return tf.reduce_sum(per_sample, axis=1), tf.reduce_sum(correct, axis=1)

    def _set_proximal_mu(self, mu: float) -> None:
        self._proximal_mu.assign(mu)

    def _run_chunk(self, every_step: bool, x, y, index, mask, count):
        """One compiled call of training: per-device loss sums, correct and seen counts."""
        return self._train_chunk[every_step](x, y, index, mask, count)

    def _evaluate_step(self, x, y, index, mask):
        """One compiled batch of evaluation: per-device loss sums and correct counts."""
        return self._evaluate_batch(x, y, index, mask)

    def compiled_functions(self) -> list:
        """Every compiled function of this stack (for counting traces)."""
        return [self._load, self._evaluate_batch, self._train_steps, *self._train_chunk.values(), self.optimizer._reset]

    # -- public API ----------------------------------------------------------------
    def train(
        self,
        samples: Sequence[Samples],
        epochs: int,
        batch_size: int,
        seeds: Sequence[int],
        checkpoint: StackCheckpoint = lambda steps: None,
        proximal_mu: float = 0.0,
        corrections: Sequence[Weights | None] | None = None,
    ) -> list[TrainResult]:
        """Train device ``d`` on ``samples[d]`` with shuffling seed ``seeds[d]``, all at once, in place.

        ``corrections[d]`` (SCAFFOLD's ``c - c_i`` of device d, or None) is added to its every gradient.
        """
        started = time.perf_counter()
        self._set_proximal_mu(proximal_mu)
        self._load_corrections(corrections or [None] * self.width)
        plans = [batch_plan(len(y), epochs, batch_size, seed) for (_, y), seed in zip(samples, seeds)]
        x, y, offsets = concatenated(samples, self.samples.target_dtype.as_numpy_dtype)
        steps = [len(p) for p in plans]
        total_steps = max(steps)
        # chunks of a few fixed lengths, so XLA compiles the step loop a few times, not once per device size
        chunk_steps = min(self.steps_per_call, 1 << max(total_steps - 1, 0).bit_length())
        index, mask = stacked_batches(plans, offsets, multiple_of=chunk_steps)
        x_t, y_t = tf.constant(x), tf.constant(y)
        totals = np.zeros((3, self.width))
        for first, count, width in self._chunks(mask[:, :total_steps], chunk_steps):
            checkpoint(first)
            # XLA's chunks keep their fixed length (padded steps are gathered, not trained)
            chunk = slice(first, first + (chunk_steps if self._xla else count))
            every_step = min(steps) >= first + count  # no device runs out of steps in this chunk
            totals += np.array([t.numpy() for t in self._run_chunk(every_step, x_t, y_t, index[:, chunk, :width],
                                                                    mask[:, chunk, :width], count)])
        checkpoint(total_steps)
        seconds = time.perf_counter() - started
        return [
            TrainResult(loss=loss / max(seen, 1), accuracy=self._accuracy(correct, seen), steps=count,
                        seconds=seconds * count / max(sum(steps), 1))
            for loss, correct, seen, count in zip(*totals, steps)
        ]

    def _chunks(self, mask: np.ndarray, chunk_steps: int) -> list[tuple[int, int, int]]:
        """The compiled calls of one training: ``(first step, steps, batch width)`` each.

        XLA compiles once per shape, so its chunks are full-width; otherwise steps whose real rows all fit a
        narrower batch (each device's short last batch) run at that width: no compute on fully masked rows.
        """
        if self._xla:
            return [(first, min(chunk_steps, len(mask[0]) - first), mask.shape[2])
                    for first in range(0, len(mask[0]), chunk_steps)]
        return narrow_chunks(mask, chunk_steps)

    def evaluate(self, samples: Sequence[Samples]) -> list[tuple[float, float]]:
        """Mean loss and accuracy of each device's current weights on its ``samples`` (NaN when empty)."""
        counts = [len(y) for _, y in samples]
        if max(counts) == 0:
            return [(float("nan"), float("nan"))] * self.width
        x, y, offsets = concatenated(samples, self.samples.target_dtype.as_numpy_dtype)
        x_t, y_t = tf.constant(x), tf.constant(y)
        columns = min(max(counts), max(1, EVAL_BATCH // self.width))
        index, mask = stacked_batches([in_order(n, columns) for n in counts], offsets)
        totals = np.zeros((2, self.width))
        for step in range(index.shape[1]):
            totals += np.array([t.numpy() for t in self._evaluate_step(x_t, y_t, index[:, step], mask[:, step])])
        return [
            (loss / n, self._accuracy(correct, n)) if n else (float("nan"), float("nan"))
            for loss, correct, n in zip(*totals, counts)
        ]

    def _accuracy(self, correct: float, seen: float) -> float:
        return correct / max(seen, 1) if self.samples.task == "classification" else float("nan")
