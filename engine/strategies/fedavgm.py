"""FedAvgM: FedAvg with server momentum (Hsu et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from devices.messages import Weights
from engine.aggregation import as_float32, momentum_update, pseudo_gradient
from engine.strategies.base import FRACTION, POSITIVE, Strategy, hyperparameter, state


@dataclass
class FedAvgM(Strategy):
    """Federated Averaging with Server Momentum (Hsu, Qi & Brown 2019, "Measuring the Effects of
    Non-Identical Data Distribution for Federated Visual Classification").

    Each round: ``v = momentum * v + (global - mean)``, then ``global = global - learning_rate * v``,
    with ``v = 0`` before the first round. With ``server_momentum = 0`` and ``server_learning_rate = 1``
    this is FedAvg.
    """

    name = "fedavgm"
    title = "FedAvgM"
    summary = "FedAvg plus server-side momentum: the global model keeps moving in the direction of recent rounds."
    linear = True

    server_learning_rate: float = hyperparameter(1.0, "server step size applied to the momentum", POSITIVE)
    server_momentum: float = hyperparameter(0.5, "decay of the server momentum", FRACTION)

    _velocity: Weights | None = state()

    def from_mean(self, server_round: int, global_weights: Weights, mean: Weights) -> Weights:
        delta = pseudo_gradient(global_weights, mean)
        self._velocity = as_float32(momentum_update(self._current_velocity(delta), delta, self.server_momentum))
        return self._step(global_weights)

    def _current_velocity(self, delta: Weights) -> Weights:
        """The momentum so far; zeros before the first round (or if the model's shapes changed)."""
        if self._velocity is None or [v.shape for v in self._velocity] != [d.shape for d in delta]:
            return [np.zeros(d.shape, np.float32) for d in delta]
        return self._velocity

    def _step(self, global_weights: Weights) -> Weights:
        assert self._velocity is not None
        return as_float32([g - self.server_learning_rate * v for g, v in zip(global_weights, self._velocity)])
