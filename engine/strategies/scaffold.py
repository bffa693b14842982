"""SCAFFOLD: control variates correct the drift of devices' local training (Karimireddy et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from devices.messages import DeviceUpdate, Weights
from engine.aggregation import as_float32, scaffold_step
from engine.strategies.base import POSITIVE, AggregationSkipped, LocalOptions, Strategy, hyperparameter, state


@dataclass
class Scaffold(Strategy):
    """SCAFFOLD (Karimireddy, Kale, Mohri, Reddi, Stich & Suresh 2020, "SCAFFOLD: Stochastic Controlled
    Averaging for Federated Learning", ICML), Algorithm 1 with option II.

    The server keeps a control variate ``c`` (its estimate of the global gradient) and each device its own
    ``c_i`` (of its local gradient). Devices step along ``g - c_i + c``, which cancels the pull of their own
    data on non-IID splits, and afterwards set ``c_i = c_i - c + (x - y) / (K lr)``. The server averages the
    models (unweighted, as in the paper), scaled by ``server_learning_rate``, and adds the mean change of
    the ``c_i`` times ``|S| / N``. Needs local SGD (the update of ``c_i`` assumes it); momentum is
    accounted for like FedNova's ``||a||_1``. Each device's ``c_i`` lives on the device (on Flower: in the
    SuperNode's ``context.state``, ``flower_app.node.LocalNode.respond_with_state``) and, in-process, in the run
    store.
    """

    name = "scaffold"
    title = "SCAFFOLD"
    summary = "Control variates correct each device's local steps towards the global direction (needs SGD)."
    linear = False
    needs_sgd = True
    fresh_local_optimizer = True  # c_i's update divides by the local work of momentum started at zero

    server_learning_rate: float = hyperparameter(1.0, "server step size on the averaged update", POSITIVE)

    _control: Weights | None = state()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.num_devices: int | None = None

    def bind(self, num_devices: int) -> None:
        self.num_devices = num_devices

    def local_options(self) -> LocalOptions:
        return LocalOptions(control_variates=True, control_variate=self._control)

    def aggregate(self, server_round: int, global_weights: Weights, updates: Sequence[DeviceUpdate]) -> Weights:
        missing = [u.device_id for u in updates if u.control_delta is None]
        if missing:
            raise AggregationSkipped(f"scaffold needs each device's control-variate change; device(s) "
                                     f"{', '.join(map(str, missing))} sent none")
        control = self._control or [np.zeros(np.shape(w), np.float32) for w in global_weights]
        weights, control = scaffold_step(global_weights, [u.weights for u in updates], control,
                                         [u.control_delta for u in updates], self.num_devices or len(updates),
                                         self.server_learning_rate)
        self._control = as_float32(control)
        return as_float32(weights)
