"""A simulated device: its private data, its local training, its update."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from devices.messages import DeviceMetrics, DeviceUpdate, TrainInstructions
from devices.trainer import Checkpoint, ModelReplica


class SimulatedCrash(RuntimeError):
    """A device configured to fail raises this halfway through local training."""


@dataclass(frozen=True)
class DeviceData:
    """A device's own samples: a training part and a small local test split (uint8 images)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_train(self) -> int:
        return len(self.y_train)


class Device:
    """Holds only its own data; trains whatever model the server sends it.

    ``fault`` simulates a misbehaving device: ``"crash"`` raises mid-training,
    ``"nan"`` sends back weights full of NaN.
    """

    def __init__(self, device_id: int, data: DeviceData, fault: str = "none"):
        self.device_id = device_id
        self.data = data
        self.fault = fault

    def fit(self, instructions: TrainInstructions, replica: ModelReplica, checkpoint: Checkpoint) -> DeviceUpdate:
        """Train the received model on local data and return the update."""
        data = self.data
        replica.set_weights(instructions.weights)
        received_loss, received_accuracy, _ = replica.evaluate(data.x_test, data.y_test)
        replica.reset_optimizer(instructions.learning_rate)
        halfway = -(-data.num_train // instructions.batch_size) * instructions.local_epochs // 2

        def device_checkpoint(steps_done: int) -> None:
            checkpoint(steps_done)
            if self.fault == "crash" and steps_done >= halfway:
                raise SimulatedCrash(f"device {self.device_id} crashed after {steps_done} local steps")

        trained = replica.train(
            data.x_train,
            data.y_train,
            epochs=instructions.local_epochs,
            batch_size=instructions.batch_size,
            seed=instructions.seed,
            checkpoint=device_checkpoint,
        )
        local_loss, local_accuracy, _ = replica.evaluate(data.x_test, data.y_test)
        weights = replica.get_weights()
        if self.fault == "nan":
            weights = [np.full_like(array, np.nan) for array in weights]
        return DeviceUpdate(
            device_id=self.device_id,
            weights=weights,
            num_samples=data.num_train,
            metrics=DeviceMetrics(
                train_loss=trained.loss,
                train_accuracy=trained.accuracy,
                received_loss=received_loss,
                received_accuracy=received_accuracy,
                local_loss=local_loss,
                local_accuracy=local_accuracy,
                steps=trained.steps,
                seconds=trained.seconds,
            ),
        )
