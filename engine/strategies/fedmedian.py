"""FedMedian: the coordinate-wise median of the devices' models (Yin et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from devices.messages import DeviceUpdate, Weights
from engine.aggregation import as_float32, coordinate_median
from engine.strategies.base import Strategy


@dataclass
class FedMedian(Strategy):
    """Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates"). Unweighted: every device counts once, whatever its sample count, so a minority of
    arbitrary updates cannot move the result far."""

    name = "fedmedian"
    title = "FedMedian"
    summary = "Takes each weight's median across the devices: robust to a minority of bad or malicious updates."
    linear = False

    def aggregate(self, server_round: int, global_weights: Weights, updates: Sequence[DeviceUpdate]) -> Weights:
        return as_float32(coordinate_median([u.weights for u in updates]))
