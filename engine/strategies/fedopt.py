"""Adaptive federated optimisation: FedAdagrad, FedAdam and FedYogi (Reddi et al. 2021)."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np

from devices.messages import Weights
from engine.aggregation import (
    adagrad_second_moment,
    adam_second_moment,
    adaptive_step,
    as_float32,
    first_moment_update,
    pseudo_gradient,
    yogi_second_moment,
)
from engine.strategies.base import FRACTION, POSITIVE, Strategy, hyperparameter, state


@dataclass
class FedOpt(Strategy):
    """Algorithm 2 of Reddi et al. 2021, "Adaptive Federated Optimization" (ICLR).

    The average device update ``delta = mean - global`` is a pseudo-gradient for a server optimizer:
    ``m = beta_1 * m + (1 - beta_1) * delta``, ``v = second_moment(v, delta)``,
    ``global = global + server_learning_rate * m / (sqrt(v) + tau)``, starting from ``m = 0`` and
    ``v = tau^2``. Subclasses differ only in :meth:`second_moment`. No bias correction, as in the paper.
    """

    # Defaults: devices train locally with Adam (lr 0.002), so deltas are small. On Fashion-MNIST (MLP and CNN,
    # 5 devices) FedAdam/FedYogi learn best near eta 0.03 with tau 1e-3; eta 0.1 (Flower's default) oscillates,
    # eta 0.01 is slow. beta_1 = 0.9 matters: without bias correction it damps the first steps (0.5 diverged).
    server_learning_rate: float = hyperparameter(0.03, "server step size eta", POSITIVE)
    tau: float = hyperparameter(1e-3, "adaptivity tau: larger is closer to plain server SGD with momentum", POSITIVE)
    beta_1: float = hyperparameter(0.9, "decay of the first moment (server momentum)", FRACTION)

    _m: Weights | None = state()
    _v: Weights | None = state()

    def from_mean(self, server_round: int, global_weights: Weights, mean: Weights) -> Weights:
        delta = pseudo_gradient(global_weights, mean)
        self._initialise_moments(delta)
        assert self._m is not None and self._v is not None
        self._m = as_float32(first_moment_update(self._m, delta, self.beta_1))  # state kept in the model's precision
        self._v = as_float32(self.second_moment(self._v, delta))
        return as_float32(adaptive_step(global_weights, self._m, self._v, self.server_learning_rate, self.tau))

    def _initialise_moments(self, delta: Weights) -> None:
        """``m = 0`` and ``v = tau^2`` before the first round (or if the model's shapes changed)."""
        shapes = [d.shape for d in delta]
        if self._m is None or self._v is None or [m.shape for m in self._m] != shapes:
            self._m = [np.zeros(d.shape, np.float32) for d in delta]
            self._v = [np.full(d.shape, self.tau**2, np.float32) for d in delta]

    @abstractmethod
    def second_moment(self, v: Weights, delta: Weights) -> Weights:
        """The next second-moment estimate from the current one and the pseudo-gradient."""


@dataclass
class FedAdagrad(FedOpt):
    """FedAdagrad (Reddi et al. 2021): ``v = v + delta^2``, so the step shrinks as updates accumulate."""

    name = "fedadagrad"
    title = "FedAdagrad"
    summary = "Adagrad on the server: per-weight steps shrink as the squared updates accumulate."
    linear = True

    # v only grows, so Adagrad wants a larger step than Adam/Yogi (0.1 beat 0.03 and 0.05 on the MLP and CNN).
    server_learning_rate: float = hyperparameter(0.1, "server step size eta", POSITIVE)

    def second_moment(self, v: Weights, delta: Weights) -> Weights:
        return adagrad_second_moment(v, delta)


@dataclass
class FedAdam(FedOpt):
    """FedAdam (Reddi et al. 2021): ``v = beta_2 * v + (1 - beta_2) * delta^2``."""

    name = "fedadam"
    title = "FedAdam"
    summary = "Adam on the server: the averaged update is a gradient with momentum and per-weight step sizes."
    linear = True

    beta_2: float = hyperparameter(0.99, "decay of the second moment", FRACTION)

    def second_moment(self, v: Weights, delta: Weights) -> Weights:
        return adam_second_moment(v, delta, self.beta_2)


@dataclass
class FedYogi(FedOpt):
    """FedYogi (Reddi et al. 2021): ``v = v - (1 - beta_2) * delta^2 * sign(v - delta^2)``, an additive,
    more cautious move of ``v`` towards ``delta^2`` than Adam's."""

    name = "fedyogi"
    title = "FedYogi"
    summary = "Yogi on the server: like FedAdam, but its per-weight step sizes change more gradually."
    linear = True

    beta_2: float = hyperparameter(0.99, "decay of the second moment", FRACTION)

    def second_moment(self, v: Weights, delta: Weights) -> Weights:
        return yogi_second_moment(v, delta, self.beta_2)
