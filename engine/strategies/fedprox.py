"""FedProx: FedAvg on the server, a proximal term in the devices' local objective (Li et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

from devices.messages import Weights
from engine.aggregation import as_float32
from engine.strategies.base import NON_NEGATIVE, LocalOptions, Strategy, hyperparameter


@dataclass
class FedProx(Strategy):
    """FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks").

    Devices minimise ``loss(w) + (mu / 2) * ||w - w_global||^2``, which keeps their models near the
    global one on heterogeneous data; the server then averages as FedAvg does. ``proximal_mu = 0`` is FedAvg.
    """

    name = "fedprox"
    title = "FedProx"
    summary = "FedAvg whose devices are pulled back towards the global model while they train (proximal term)."
    linear = True

    proximal_mu: float = hyperparameter(0.01, "weight mu of the proximal term (mu/2)||w - w_global||^2", NON_NEGATIVE)

    def local_options(self) -> LocalOptions:
        return LocalOptions(proximal_mu=self.proximal_mu)

    def from_mean(self, server_round: int, global_weights: Weights, mean: Weights) -> Weights:
        return as_float32(mean)
