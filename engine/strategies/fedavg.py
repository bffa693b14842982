"""FedAvg: the sample-weighted mean of the devices' models (McMahan et al. 2017)."""

from __future__ import annotations

from typing import Sequence

from devices.messages import DeviceUpdate, Weights
from engine.aggregation import weighted_average
from engine.strategies.base import Strategy


class FedAvg(Strategy):
    name = "fedavg"

    def aggregate(self, server_round: int, global_weights: Weights, updates: Sequence[DeviceUpdate]) -> Weights:
        return weighted_average([u.weights for u in updates], [u.num_samples for u in updates])
