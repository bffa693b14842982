"""Stacks of dense-only models that share one trace of their compiled functions across every stack width.

A :class:`devices.stacked.StackedReplica` captures its own variables in its
compiled functions, so every stack, and every width, traced its own graphs:
the CLI's 10 MLP devices in stacks of 4, 3 and 3 traced twice before round 1
could finish, each trace seconds of Python under the GIL (round 1 2.0-2.5x a
steady round). A :class:`SharedStack` passes its state in and out as tensors
instead (:mod:`devices.stacked_program`), so the first stack of a model in a
process traces and the others, of any width, do not.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from devices.messages import Weights
from devices.optimizer_state import OptimizerState, device_states, stack_states
from devices.precision import compute_dtype
from devices.stacked import StackedReplica
from devices.stacked_layers import NotStackable, compiles_well, stack_plan
from devices.stacked_optimizer import StackedOptimizer
from devices.stacked_program import StackKey, StackState, program_for
from devices.trainer import KERAS_RNG_LOCK, ModelBuilder, OptimizerSpec, SampleSpec


def stacked_arrays(per_device: Sequence[Weights]) -> list[tf.Tensor]:
    """Each device's weights stacked per weight, ``[devices, *shape]``, as float32 tensors."""
    return [tf.constant(np.stack([np.asarray(weights[i], np.float32) for weights in per_device]))
            for i in range(len(per_device[0]))]


class SharedStack(StackedReplica):
    """A :class:`StackedReplica` of a dense-only model whose compiled functions are shared by every stack of
    that model, whatever its width (:mod:`devices.stacked_program`): a new stack traces nothing.

    Its state (weights, anchors, corrections, optimizer) is tensors handed to those functions. Only for
    dense-only models (:func:`shares_traces`): the same design ran the CNN's steady rounds ~4x slower (1.1 s
    against 4.1-4.8 s, dashboard federation, load 3-5), so convolutional stacks keep their own variables.
    """

    def __init__(
        self, build_model: ModelBuilder, optimizer: OptimizerSpec, width: int, steps_per_call: int = 25,
        xla: bool = False, samples: SampleSpec | None = None, precision: str = "float32",
    ):
        """``xla`` compiles the step loop with XLA where that helps (dense-only models): faster rounds
        after a compile of a few seconds per width. ``samples`` as for ``ModelReplica``. ``precision``
        ``bfloat16`` computes in bfloat16 on float32 master weights (mixed precision). Builds none of
        :class:`StackedReplica`'s own variables and functions."""
        with KERAS_RNG_LOCK:
            template = build_model()
        self.samples = samples or SampleSpec.for_model(template)
        self.width = width
        self.steps_per_call = steps_per_call
        shapes = tuple(tuple(w.shape) for w in template.weights)
        ops = stack_plan(template)
        if not shares_traces(ops):
            raise NotStackable("only dense-only models share their stacks' traces")
        self._program = program_for(StackKey(ops, shapes, self.samples, StackedOptimizer.of(optimizer),
                                             compute_dtype(precision).name, xla))
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
        weights, slots, iterations, *counts = self._program.train_chunk[every_step](x, y, index, mask, count,
                                                                                  self._state)
        self._state = self._state._replace(weights=weights, slots=slots, iterations=iterations)
        return counts

    def _evaluate_step(self, x, y, index, mask):
        return self._program.evaluate_batch(x, y, index, mask, self._state.weights)

    def compiled_functions(self) -> list:
        return self._program.functions()

    def _set_proximal_mu(self, mu: float) -> None:
        self._state = self._state._replace(proximal_mu=tf.constant(mu, tf.float32))


def shares_traces(ops) -> bool:
    """Whether stacks of this model are :class:`SharedStack`\\ s (dense-only models)."""
    return compiles_well(ops)


def stacked_replica(build_model: ModelBuilder, optimizer: OptimizerSpec, width: int, dense_only: bool,
                    **options) -> StackedReplica:
    """A stack of ``width`` devices: a :class:`SharedStack` for a ``dense_only`` model, else its own."""
    return (SharedStack if dense_only else StackedReplica)(build_model, optimizer, width, **options)
