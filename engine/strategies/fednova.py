"""FedNova: normalised averaging for devices that run different numbers of local steps (Wang et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from devices.messages import DeviceUpdate, Weights
from devices.scaffold import local_work  # FedNova's ||a||_1, shared with SCAFFOLD's devices
from engine.aggregation import as_float32, fednova_step
from engine.strategies.base import FRACTION, Strategy, hyperparameter


@dataclass
class FedNova(Strategy):
    """FedNova (Wang, Liu, Liang, Joshi & Poor 2020, "Tackling the Objective Inconsistency Problem in
    Heterogeneous Federated Optimization", NeurIPS).

    Under FedAvg a device with more data runs more local steps and moves the model further, so the federation
    converges towards a mix of objectives skewed to those devices. FedNova divides each device's update by its
    local work ``a_i`` (its step count, ``DeviceMetrics.steps``; with momentum SGD the paper's ``||a_i||_1``),
    averages those by sample count and scales by the mean work ``tau_eff``. Devices training with Adam are
    treated as plain SGD (the paper defines ``a_i`` for SGD, momentum and proximal updates only).
    """

    name = "fednova"
    title = "FedNova"
    summary = "FedAvg with each update divided by the device's number of local steps: no drift to busy devices."
    linear = False
    fresh_local_optimizer = True  # a_i is the local work of momentum started at zero

    local_momentum: float = hyperparameter(
        0.0, "momentum rho of the devices' local SGD, for ||a||_1 (0: plain SGD or Adam)", FRACTION
    )

    def aggregate(self, server_round: int, global_weights: Weights, updates: Sequence[DeviceUpdate]) -> Weights:
        norms = [local_work(max(u.metrics.steps, 1), self.local_momentum) for u in updates]
        return as_float32(fednova_step(global_weights, [u.weights for u in updates],
                                       [u.num_samples for u in updates], norms))
