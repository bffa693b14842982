"""FedTrimmedAvg: the coordinate-wise trimmed mean of the devices' models (Yin et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from devices.messages import DeviceUpdate, Weights
from engine.aggregation import as_float32, trimmed_mean
from engine.strategies.base import Bounds, Strategy, hyperparameter


@dataclass
class FedTrimmedAvg(Strategy):
    """Coordinate-wise trimmed mean (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates"). For each weight, drops the ``floor(beta * n)`` largest and smallest values (never
    all of them) and averages the rest, unweighted. ``beta = 0`` is the plain unweighted mean."""

    name = "fedtrimmedavg"
    title = "FedTrimmedAvg"
    summary = "Drops each weight's highest and lowest values across devices, then averages the rest."
    linear = False

    beta: float = hyperparameter(0.2, "fraction of models trimmed at each end", Bounds(low=0.0, high=0.5))

    def aggregate(self, server_round: int, global_weights: Weights, updates: Sequence[DeviceUpdate]) -> Weights:
        return as_float32(trimmed_mean([u.weights for u in updates], self.beta))
