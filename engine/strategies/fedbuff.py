"""FedBuff: asynchronous buffered aggregation with staleness-weighted updates (Nguyen et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from devices.messages import DeviceUpdate, Weights
from engine.aggregation import as_float32
from engine.settings import AT_LEAST_ONE
from engine.strategies.base import NON_NEGATIVE, POSITIVE, Strategy, hyperparameter

STALENESS = "staleness"  # the key of ``DeviceUpdate.extras`` holding an update's staleness (absent: 0)


def staleness_weight(staleness: int, exponent: float = 0.5) -> float:
    """How much an update ``staleness`` server versions old counts: ``(1 + s) ** -exponent``.

    ``exponent = 0.5`` is the paper's ``1 / sqrt(1 + s)``; 0 counts every update fully, 1 is ``1 / (1 + s)``.
    """
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    return float((1.0 + staleness) ** -exponent)


def fedbuff_step(
    global_weights: Weights, models: Sequence[Weights], staleness: Sequence[int], exponent: float,
    server_learning_rate: float, buffer_size: int,
) -> Weights:
    """``w + eta_g * sum_i weight(s_i) * (y_i - w) / K``: the paper's server step over one buffer.

    ``models`` are the devices' models rebased on ``global_weights`` (the global model plus each device's own
    delta, ``y_i - w_start_i``), so ``y_i - w`` is that delta. The sum is divided by ``buffer_size`` (K), not
    by the number of updates, as in the paper's Algorithm 1: a buffer applied early with fewer updates (too few
    devices active to fill it) moves the model less. More than K updates (a synchronous round) are divided by
    their number instead, so that round is their mean. Unweighted by sample counts, as in the paper.
    """
    if len(models) != len(staleness):
        raise ValueError(f"{len(models)} models but {len(staleness)} staleness values")
    divisor = max(buffer_size, len(models))
    factors = [staleness_weight(s, exponent) / divisor for s in staleness]
    step = [np.zeros(np.shape(w), np.float64) for w in global_weights]
    for model, factor in zip(models, factors):
        for total, layer, start in zip(step, model, global_weights):
            total += factor * (np.asarray(layer, np.float64) - np.asarray(start, np.float64))
    return [np.asarray(w, np.float64) + server_learning_rate * s for w, s in zip(global_weights, step)]


def update_staleness(update: DeviceUpdate) -> int:
    """The staleness the asynchronous loop recorded on ``update`` (0 in a synchronous round)."""
    return int(update.extras.get(STALENESS, 0))


@dataclass
class FedBuff(Strategy):
    """FedBuff (Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek & Huba 2022, "Federated Learning with Buffered
    Asynchronous Aggregation", AISTATS).

    Devices train continuously, each from the global model current when it starts; the server applies an
    update as soon as ``buffer_size`` (K) updates have arrived, each weighted by ``(1 + s) ** -exponent``
    where its staleness ``s`` is how many server steps happened since its device started. The schedule (an
    event queue on simulated time in-process, the wall clock on Flower) is ``engine.async_rounds``; each
    application of the buffer is one round of the charts, the run store and ``--json``. In a synchronous round
    (every staleness 0) this is FedAvg without sample weighting, scaled by ``server_learning_rate``.
    """

    name = "fedbuff"
    title = "FedBuff"
    summary = "Asynchronous: applies every K arrived updates, stale ones weighted down; slow devices never block."
    linear = False  # staleness weights are not the sample-weighted mean secure aggregation and central DP need
    asynchronous: ClassVar[bool] = True

    buffer_size: float = hyperparameter(3, "K: updates buffered before each server step", AT_LEAST_ONE,
                                        integer=True)
    server_learning_rate: float = hyperparameter(1.0, "eta_g: server step size on the buffered update", POSITIVE)
    staleness_exponent: float = hyperparameter(
        0.5, "a in the staleness weight (1+s)^-a: 0.5 is the paper's 1/sqrt(1+s), 0 no discount", NON_NEGATIVE
    )

    @property
    def capacity(self) -> int:
        return int(self.buffer_size)

    def device_problems(self, devices_per_round: int) -> list[str]:
        if self.capacity <= devices_per_round:
            return []
        return [f"fedbuff's buffer_size ({self.capacity}) cannot exceed the devices training at once "
                f"({devices_per_round}): each device adds at most one update to a buffer"]

    def aggregate(self, server_round: int, global_weights: Weights, updates: Sequence[DeviceUpdate]) -> Weights:
        return as_float32(fedbuff_step(global_weights, [u.weights for u in updates],
                                       [update_staleness(u) for u in updates], self.staleness_exponent,
                                       self.server_learning_rate, self.capacity))
