"""Privacy and secure aggregation as wrappers around any strategy they are valid for.

The round loop talks to one :class:`Aggregation`: it asks it what each device
must do with its update (:meth:`Aggregation.privacy`) and how the valid updates
become the next global model (:meth:`Aggregation.aggregate`, or
:meth:`Aggregation.from_mean` for a mean the server computed itself, as under
secure aggregation). :func:`build_aggregation` stacks the layers a
configuration asks for, like Flower's ``DifferentialPrivacy*`` strategy
wrappers:

- :class:`Aggregation`: the strategy as it is.
- :class:`DifferentialPrivacy`: devices clip their update to ``clip_norm`` (and
  add local noise); with noise, devices count equally (DP-FedAvg bounds each
  device's influence), the accountant composes one Gaussian mechanism per
  round, and central noise of stddev ``z * clip / n`` goes on the mean.
  Local noise composes with any strategy (what the server receives is already
  private; aggregating it is post-processing). Central noise needs a strategy
  that aggregates through a mean (``Strategy.linear``).
- Secure aggregation (``engine.rounds.RoundRunner.aggregate_secure``): the
  server only sees the sum of masked updates and hands its mean to
  :meth:`Aggregation.from_mean` (through the privacy layer, for central
  noise); needs a linear strategy too.

``engine.config.FederationConfig.problems`` rejects the combinations that need
a linear strategy and do not have one, so every accepted configuration runs
(``tests/test_engine_composition.py`` runs each accepted pair).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Sequence

import numpy as np

from devices.messages import DeviceUpdate, PrivacySettings, Weights
from devices.privacy import add_gaussian_noise
from engine.aggregation import weighted_average
from engine.privacy import PrivacyAccountant
from engine.strategies.base import LocalOptions, Strategy


class Aggregation:
    """The server's side of a round, around one strategy (the base layer: the strategy itself)."""

    def __init__(self, strategy: Strategy):
        self.strategy = strategy  # the innermost strategy: its state is what checkpoints keep

    @property
    def linear(self) -> bool:
        return self.strategy.linear

    @property
    def uniform(self) -> bool:
        """Whether devices count equally (not by sample count) in this aggregation."""
        return False

    @property
    def averages(self) -> bool:
        """Whether the next model depends on the updates only through their weighted mean (:meth:`coefficient`
        each), so the round can add each update into a running mean as it decodes it, then call :meth:`from_mean`."""
        return self.strategy.linear and type(self.strategy).aggregate is Strategy.aggregate

    def coefficient(self, update) -> float:
        """An update's weight in the mean: its sample count (FedAvg), or 1 when devices count equally."""
        return 1.0 if self.uniform else float(update.num_samples)

    def local_options(self) -> LocalOptions:
        return self.strategy.local_options()

    def privacy(self) -> PrivacySettings:
        return PrivacySettings()

    def aggregate(self, server_round: int, global_weights: Weights, updates: Sequence[DeviceUpdate]) -> Weights:
        return self.strategy.aggregate(server_round, global_weights, updates)

    def from_mean(self, server_round: int, global_weights: Weights, mean: Weights, count: int) -> Weights:
        """The next model from the mean of ``count`` devices' models (linear strategies only)."""
        return self.strategy.from_mean(server_round, global_weights, mean)

    def spend_round(self, sampling_rate: float) -> float | None:
        """Account this round's privacy loss; epsilon so far (None: no differential privacy)."""
        return None



class DifferentialPrivacy(Aggregation):
    """DP-FedAvg around ``inner`` (McMahan et al. 2018): clipping, local and/or central Gaussian noise."""

    def __init__(
        self,
        inner: Aggregation,
        clip_norm: float,
        noise_multiplier: float = 0.0,
        local_noise_multiplier: float = 0.0,
        delta: float = 1e-5,
        seed: int = 0,
    ):
        super().__init__(inner.strategy)
        if noise_multiplier > 0 and not inner.linear:
            raise ValueError(f"central DP noise goes on the mean update; {inner.strategy.name} does not use a mean")
        self.inner = inner
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.local_noise_multiplier = local_noise_multiplier
        self.seed = seed
        noisy = noise_multiplier > 0 or local_noise_multiplier > 0
        self.accountant = PrivacyAccountant(delta) if noisy else None

    @property
    def uniform(self) -> bool:
        return self.accountant is not None  # clipping alone keeps FedAvg's sample weighting

    @property
    def averages(self) -> bool:
        return self.noise_multiplier > 0 or self.inner.averages  # central noise goes on the weighted mean

    def privacy(self) -> PrivacySettings:
        return PrivacySettings(self.clip_norm, self.local_noise_multiplier)

    def aggregate(self, server_round: int, global_weights: Weights, updates: Sequence[DeviceUpdate]) -> Weights:
        if self.uniform:
            updates = [replace(u, num_samples=1) for u in updates]
        if self.noise_multiplier > 0:
            mean = weighted_average([u.weights for u in updates], [u.num_samples for u in updates])
            return self.from_mean(server_round, global_weights, mean, len(updates))
        return self.inner.aggregate(server_round, global_weights, updates)

    def from_mean(self, server_round: int, global_weights: Weights, mean: Weights, count: int) -> Weights:
        if self.noise_multiplier > 0:
            stddev = self.noise_multiplier * self.clip_norm / count
            rng = np.random.default_rng([self.seed, server_round, 2])
            delta = add_gaussian_noise([m - w for m, w in zip(mean, global_weights)], stddev, rng)
            mean = [w + d for w, d in zip(global_weights, delta)]
        return self.inner.from_mean(server_round, global_weights, mean, count)

    def spend_round(self, sampling_rate: float) -> float | None:
        if self.accountant is None:
            return None
        if self.noise_multiplier > 0:
            return self.accountant.spend_round(self.noise_multiplier, sampling_rate)
        return self.accountant.spend_round(self.local_noise_multiplier, 1.0)  # each device's own release


def build_aggregation(strategy: Strategy, config) -> Aggregation:
    """The strategy wrapped in the privacy layer ``config`` (a ``FederationConfig``) asks for."""
    aggregation = Aggregation(strategy)
    if config.clip_norm is not None:
        aggregation = DifferentialPrivacy(
            aggregation, config.clip_norm, config.noise_multiplier, config.local_noise_multiplier,
            config.dp_delta, config.seed,
        )
    return aggregation


def strategy_state(strategy: Strategy) -> dict[str, Weights]:
    """The strategy's server-side state (its ``init=False`` fields that hold weights)."""
    return {f.name: getattr(strategy, f.name) for f in fields(strategy) if not f.init and getattr(strategy, f.name)}


def restore_strategy_state(strategy: Strategy, state: dict[str, Weights]) -> None:
    for name, value in state.items():
        setattr(strategy, name, list(value))
