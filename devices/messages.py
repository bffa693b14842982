"""The only things that cross between server and device: instructions down, an update up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from devices.secure_aggregation import SecureAggregationPlan

Weights = list[np.ndarray]


def weights_nbytes(weights: Weights) -> int:
    """Payload size of a weight list in bytes, as sent over the wire (raw array data)."""
    return int(sum(array.nbytes for array in weights))


@dataclass(frozen=True)
class PrivacySettings:
    """Per-device differential privacy: clip the update, optionally add local noise."""

    clip_norm: float | None = None  # L2 bound on the update (DP-FedAvg); None: no clipping
    local_noise_multiplier: float = 0.0  # local DP: noise stddev = multiplier * clip_norm


@dataclass(frozen=True)
class ControlVariate:
    """SCAFFOLD (Karimireddy et al. 2020): the server's control variate c, sent down with the model.

    ``weights`` is None while c is still zero (before the first aggregation); ``local_momentum`` is the
    momentum of the devices' local SGD, which sets how their step count is normalised. ``device_weights``
    is the device's own c_i as the run store kept it, sent (on Flower) only to a device that may have lost
    it, i.e. the first time a resumed run reaches it; a device that still holds its own keeps that one.
    """

    weights: Weights | None = None
    local_momentum: float = 0.0
    device_weights: Weights | None = None


@dataclass(frozen=True)
class Personalization:
    """How a device builds and evaluates its own model next to the global one (``engine.personalization``).

    ``mode`` is ``finetune`` (``steps`` local steps from the received model),
    ``fedper`` (the arrays at positions ``head`` stay on the device and are not
    sent) or ``ditto`` (a personal model trained with ``lam/2 ||v - w||^2``
    toward the received model w).
    """

    mode: str
    steps: int = 0
    lam: float = 0.0
    head: tuple[int, ...] = ()


@dataclass(frozen=True)
class TrainInstructions:
    """What the server sends a device for one round: the global model and how to train it."""

    server_round: int
    weights: Weights
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.01
    seed: int = 0
    proximal_mu: float = 0.0
    privacy: PrivacySettings = PrivacySettings()
    compression: str = "none"
    topk_fraction: float = 0.01
    secure: SecureAggregationPlan | None = None
    control: ControlVariate | None = None  # SCAFFOLD only
    keep_optimizer_state: bool = False  # start from this device's own optimizer state of its last round
    personal: Personalization | None = None  # --personalize only


@dataclass(frozen=True)
class DeviceMetrics:
    """What a device reports about its round (losses are mean cross-entropy)."""

    train_loss: float
    train_accuracy: float
    received_loss: float  # the global model it received, on its local test split
    received_accuracy: float
    local_loss: float  # its trained model, on its local test split
    local_accuracy: float
    steps: int
    seconds: float
    personalized_loss: float = float("nan")  # the device's personalised model on its local test split
    personalized_accuracy: float = float("nan")  # (NaN: no personalisation this run)


@dataclass(frozen=True)
class DeviceUpdate:
    """A device's model after local training, its sample count and its metrics."""

    device_id: int
    weights: Weights
    num_samples: int
    metrics: DeviceMetrics
    extras: dict = field(default_factory=dict)
    control_delta: Weights | None = None  # SCAFFOLD: how the device's control variate changed

    @property
    def nbytes(self) -> int:
        return weights_nbytes(self.weights) + weights_nbytes(self.control_delta or [])


@dataclass(frozen=True)
class EncodedUpdate:
    """The update as it leaves the device: serialised (possibly compressed or masked) bytes.

    ``masked`` holds the secure-aggregation vector instead of ``payload`` when
    the round uses secure aggregation.
    """

    device_id: int
    num_samples: int
    metrics: DeviceMetrics
    payload: bytes = b""
    masked: np.ndarray | None = None
    control_delta: Weights | None = None  # SCAFFOLD: sent uncompressed next to the model update

    @property
    def nbytes(self) -> int:
        model = len(self.payload) if self.masked is None else int(self.masked.nbytes)
        return model + weights_nbytes(self.control_delta or [])
