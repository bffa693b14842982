"""The only things that cross between server and device: instructions down, an update up."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Weights = list[np.ndarray]


def weights_nbytes(weights: Weights) -> int:
    """Payload size of a weight list in bytes, as sent over the wire (raw array data)."""
    return int(sum(array.nbytes for array in weights))


@dataclass(frozen=True)
class TrainInstructions:
    """What the server sends a device for one round: the global model and how to train it."""

    server_round: int
    weights: Weights
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.01
    seed: int = 0


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


@dataclass(frozen=True)
class DeviceUpdate:
    """A device's answer: its new weights, how many samples produced them, and its metrics."""

    device_id: int
    weights: Weights
    num_samples: int
    metrics: DeviceMetrics
    extras: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return weights_nbytes(self.weights)
