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
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from devices.messages import Weights
from devices.optimizer_state import OptimizerState, device_states, stack_states
from devices.precision import compute_dtype
from devices.stacked_layers import compiles_well, stack_plan
from devices.stacked_optimizer import StackedOptimizer
from devices.stacked_program import StackKey, StackState, program_for
from devices.trainer import (
    EVAL_BATCH,
    KERAS_RNG_LOCK,
    ModelBuilder,
    OptimizerSpec,
    SampleSpec,
    TrainResult,
    batch_plan,
    batches_per_epoch,
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


def stacked_arrays(per_device: Sequence[Weights]) -> list[tf.Tensor]:
    """Each device's weights stacked per weight, ``[devices, *shape]``, as float32 tensors."""
    return [tf.constant(np.stack([np.asarray(weights[i], np.float32) for weights in per_device]))
            for i in range(len(per_device[0]))]


def concatenated(samples: Sequence[Samples], target_dtype=np.int32) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """All devices' samples in one array each, and where each device's samples start."""
    offsets = np.cumsum([0] + [len(y) for _, y in samples[:-1]]).tolist()
    targets = np.concatenate([y for _, y in samples]).astype(target_dtype)
    return np.concatenate([x for x, _ in samples]), targets, offsets


class StackedReplica:
    """``width`` devices' copies of one model, trained together; reused across rounds like ``ModelReplica``.

    Its state (weights, FedProx anchors, SCAFFOLD corrections, optimizer slots) is tensors handed to compiled
    functions that every stack of the same model shares (:mod:`devices.stacked_program`): a new stack of a
    width already traced traces nothing, in this federation or any other of the process (dashboard sessions).
    Dense-only models share one trace for every width; convolutional ones one per width, because a grouped
    convolution over an unknown number of devices ran the dashboard CNN's steady rounds ~4x slower.
    """

    def __init__(
        self, build_model: ModelBuilder, optimizer: OptimizerSpec, width: int, steps_per_call: int = 25,
        xla: bool = False, samples: SampleSpec | None = None, precision: str = "float32",
        template: keras.Model | None = None,
    ):
        """``xla`` compiles the step loop with XLA where that helps (dense-only models): faster rounds
        after a compile of a few seconds per width. ``samples`` as for ``ModelReplica``. ``precision``
        ``bfloat16`` computes in bfloat16 on float32 master weights (mixed precision). ``template``: a model
        ``build_model`` built before, read for its layers and weight shapes only (saves building one)."""
        if template is None:
            with KERAS_RNG_LOCK:
                template = build_model()
        self.samples = samples or SampleSpec.for_model(template)
        self.width = width
        self.steps_per_call = steps_per_call
        shapes = tuple(tuple(w.shape) for w in template.weights)
        ops = stack_plan(template)
        any_width = compiles_well(ops)  # dense-only
        self._program = program_for(StackKey(ops, shapes, self.samples, StackedOptimizer.of(optimizer),
                                             compute_dtype(precision).name, xla, None if any_width else width))
        self._optimizer, self._xla = self._program.key.optimizer, self._program.xla
        zeros = [tf.zeros([width, *shape]) for shape in shapes]
        self._zero_corrections, self._fresh_slots = zeros, self._optimizer.fresh_slots(zeros)
        self._state = StackState(zeros, zeros, zeros, tf.constant(0.0), tf.constant(0, tf.int64),
                                 tf.constant(0.0), self._fresh_slots)

    # -- weights -------------------------------------------------------------
    def load(self, weights: Weights) -> None:
        """Every device starts from ``weights``, which are also FedProx's anchor (one compiled call)."""
        stacked = self._program.load([np.asarray(value, np.float32) for value in weights], self.width)
        self._state = self._state._replace(weights=stacked, anchors=stacked)

    def load_each(self, starts: Sequence[Weights], anchors: Sequence[Weights]) -> None:
        """Device ``d`` starts from ``starts[d]`` (personalisation: its own model), with ``anchors[d]`` as the
        anchor of its proximal term."""
        self._state = self._state._replace(weights=stacked_arrays(starts), anchors=stacked_arrays(anchors))

    def _load_corrections(self, corrections: Sequence[Weights | None]) -> None:
        """SCAFFOLD's per-device corrections; all None (every other strategy) keeps them at zero."""
        if all(c is None for c in corrections):
            self._state = self._state._replace(corrections=self._zero_corrections)
            return
        per_device = [[np.zeros(z.shape[1:], np.float32) for z in self._zero_corrections] if c is None else c
                      for c in corrections]
        self._state = self._state._replace(corrections=stacked_arrays(per_device))

    @property
    def variables(self) -> list[tf.Tensor]:
        """The stacked weights, ``[width, *shape]`` each, in ``model.weights`` order."""
        return self._state.weights

    def get_weights(self) -> list[Weights]:
        """Each device's weights, in ``model.weights`` order."""
        arrays = [w.numpy() for w in self._state.weights]
        return [[array[d] for array in arrays] for d in range(self.width)]

    def reset_optimizer(self, learning_rate: float, states: Sequence[OptimizerState | None] | None = None) -> None:
        """Fresh optimizers, or each device's kept state (``states[d]``, None: fresh) in its slot."""
        iterations, slots = tf.constant(0, tf.int64), self._fresh_slots
        if states is not None:
            one_device = [np.zeros((), np.int64)] + [np.zeros(s.shape[1:], np.float32) for s in self._fresh_slots]
            stacked = stack_states(states, one_device, self._optimizer.slot_betas(len(self._zero_corrections)))
            if int(stacked[0]) > 0:
                iterations = tf.constant(stacked[0], tf.int64)
                slots = [tf.constant(slot, tf.float32) for slot in stacked[1:]]
        self._state = self._state._replace(iterations=iterations, slots=slots,
                                           learning_rate=tf.constant(learning_rate, tf.float32))

    def optimizer_states(self) -> list[OptimizerState]:
        """Each device's optimizer state after training (the stack's step count, its own slots)."""
        state = [self._state.iterations.numpy()] + [s.numpy() for s in self._state.slots]
        return device_states(state, self.width)

    def _run_chunk(self, every_step: bool, x, y, index, mask, count):
        """One chunk of training (the state moves on): per-device loss sums, correct and seen counts."""
        weights, slots, iterations, *counts = self._program.run_chunk(every_step, x, y, index, mask, count,
                                                                      self._state)
        self._state = self._state._replace(weights=weights, slots=slots, iterations=iterations)
        return counts

    def _evaluate_step(self, x, y, index, mask):
        """One compiled batch of evaluation: per-device loss sums and correct counts."""
        return self._program.evaluate_batch(x, y, index, mask, self._state.weights)

    def compiled_functions(self) -> list:
        """The compiled functions this stack runs, shared with its model's other stacks (for counting traces)."""
        return self._program.functions()

    def _set_proximal_mu(self, mu: float) -> None:
        self._state = self._state._replace(proximal_mu=tf.constant(mu, tf.float32))

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
