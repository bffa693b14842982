"""FedAvg: the sample-weighted mean of the devices' models (McMahan et al. 2017)."""

from __future__ import annotations

from dataclasses import dataclass

from devices.messages import Weights
from engine.aggregation import as_float32
from engine.strategies.base import Strategy


@dataclass
class FedAvg(Strategy):
    """Federated Averaging (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
    Decentralized Data"): the new global model is the devices' models averaged by sample count."""

    name = "fedavg"
    title = "FedAvg"
    summary = "Averages the devices' models, weighted by how many samples each trained on."
    linear = True

    def from_mean(self, server_round: int, global_weights: Weights, mean: Weights) -> Weights:
        return as_float32(mean)
