"""A simulated device: its private data, its local training, its update."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from devices.codec import encode_delta
from devices.faults import SimulatedCrash, misbehave
from devices.optimizer_state import OptimizerState
from devices.messages import DeviceMetrics, DeviceUpdate, EncodedUpdate, TrainInstructions, Weights
from devices.personal import NO_SCORES, Scores, personalize_one, sent_part, starting_weights
from devices.scaffold import control_correction, updated_control
from devices.privacy import add_gaussian_noise, clip_by_global_norm
from devices.secure_aggregation import mask_update
from devices.trainer import Checkpoint, ModelReplica, TrainResult, batches_per_epoch

__all__ = ["Device", "DeviceData", "SimulatedCrash"]


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

    ``fault`` simulates a misbehaving device: ``crash`` raises mid-training,
    ``nan`` sends NaN weights, ``scale`` sends its update flipped and boosted,
    ``random`` sends random weights. ``slowdown`` multiplies its simulated
    compute time (a straggler when a round has a deadline).
    """

    def __init__(self, device_id: int, data: DeviceData, fault: str = "none", slowdown: float = 1.0):
        self.device_id = device_id
        self.data = data
        self.fault = fault
        self.slowdown = slowdown
        self._residual: Weights | None = None  # error feedback for top-k compression
        self._control: Weights | None = None  # SCAFFOLD: this device's control variate c_i (None: zero)
        self.head: Weights | None = None  # FedPer: this device's own head (None: not trained yet)
        self.personal_model: Weights | None = None  # Ditto: this device's personal model v (None: not yet)
        self._optimizer_state: OptimizerState | None = None  # its local optimizer's, when kept between rounds

    def state(self) -> dict[str, Weights]:
        """What this device must remember between rounds (kept in the run store so a resume keeps it).

        SCAFFOLD's control variate, FedPer's head and Ditto's personal model: top-k's error-feedback residual is
        not kept (a resume restarts it at zero), since storing it for every device every round would cost a
        model per device per round.
        """
        kept = {"control": self._control, "head": self.head, "personal": self.personal_model}
        return {name: value for name, value in kept.items() if value is not None}

    def restore_state(self, state: dict[str, Weights]) -> None:
        self._control = state.get("control")
        self.head = state.get("head")
        self.personal_model = state.get("personal")

    def optimizer_state(self, instructions: TrainInstructions) -> OptimizerState | None:
        """The optimizer state to train with this round: its own from its last round when kept, else None (fresh).

        Like top-k's residual it lives only on the device: not in the run store (a resume starts it fresh)."""
        return self._optimizer_state if instructions.keep_optimizer_state else None

    def keep_optimizer_state(self, instructions: TrainInstructions, state: OptimizerState) -> None:
        if instructions.keep_optimizer_state:
            self._optimizer_state = state

    def correction(self, instructions: TrainInstructions) -> Weights | None:
        """SCAFFOLD's gradient correction ``c - c_i`` for this round, or None when the round uses none."""
        return control_correction(instructions.control, self._control)

    def local_steps(self, instructions: TrainInstructions) -> int:
        return batches_per_epoch(self.data.num_train, instructions.batch_size) * instructions.local_epochs

    def guarded(self, instructions: TrainInstructions, checkpoint: Checkpoint) -> Checkpoint:
        """``checkpoint``, plus this device crashing halfway through training if its fault says so."""
        halfway = self.local_steps(instructions) // 2

        def device_checkpoint(steps_done: int) -> None:
            checkpoint(steps_done)
            if self.fault == "crash" and steps_done >= halfway:
                raise SimulatedCrash(f"device {self.device_id} crashed after {steps_done} local steps")

        return device_checkpoint

    def fit(self, instructions: TrainInstructions, replica: ModelReplica, checkpoint: Checkpoint) -> DeviceUpdate:
        """Train the received model on local data and return the resulting model."""
        data = self.data
        replica.set_weights(instructions.weights)
        received = replica.evaluate(data.x_test, data.y_test)[:2]
        start = starting_weights(self, instructions)
        if start is not instructions.weights:
            replica.set_weights(start)
        replica.reset_optimizer(instructions.learning_rate, self.optimizer_state(instructions))
        trained = replica.train(
            data.x_train,
            data.y_train,
            epochs=instructions.local_epochs,
            batch_size=instructions.batch_size,
            seed=instructions.seed,
            checkpoint=self.guarded(instructions, checkpoint),
            proximal_mu=instructions.proximal_mu,
            correction=self.correction(instructions),
        )
        self.keep_optimizer_state(instructions, replica.optimizer_state())
        local = replica.evaluate(data.x_test, data.y_test)[:2]
        weights = replica.get_weights()
        personal = personalize_one(self, instructions, replica, weights, local, lambda _: checkpoint(trained.steps))
        return self.report(instructions, weights, trained, received, local, personal)

    def report(
        self,
        instructions: TrainInstructions,
        weights: Weights,
        trained: TrainResult,
        received: tuple[float, float],
        local: tuple[float, float],
        personal: Scores = NO_SCORES,
    ) -> DeviceUpdate:
        """The trained model (tampered with if this device misbehaves) and the round's metrics.

        ``received``, ``local`` and ``personal`` are (loss, accuracy) on the local test split
        of the model received, of the model trained and of the personalised model.
        """
        rng = np.random.default_rng(instructions.seed)
        control_delta = None
        if instructions.control is not None:
            control, control_delta = updated_control(instructions, self._control, weights, trained.steps)
            self._control = control
        return DeviceUpdate(
            device_id=self.device_id,
            weights=misbehave(self.fault, instructions.weights, weights, rng),
            num_samples=self.data.num_train,
            metrics=DeviceMetrics(
                train_loss=float(trained.loss),
                train_accuracy=float(trained.accuracy),
                received_loss=float(received[0]),
                received_accuracy=float(received[1]),
                local_loss=float(local[0]),
                local_accuracy=float(local[1]),
                steps=trained.steps,
                seconds=trained.seconds,
                personalized_loss=float(personal[0]),
                personalized_accuracy=float(personal[1]),
            ),
            control_delta=control_delta,
        )

    def respond(self, instructions: TrainInstructions, replica: ModelReplica, checkpoint: Checkpoint) -> EncodedUpdate:
        """Train, then send the update as instructed."""
        return self.encode(instructions, self.fit(instructions, replica, checkpoint))

    def encode(self, instructions: TrainInstructions, update: DeviceUpdate) -> EncodedUpdate:
        """Clip, noise, compress or mask the update's delta as instructed, and serialise it (under FedPer the
        body's only: the head stays on the device)."""
        delta = [(t - r).astype(np.float32)
                 for t, r in zip(sent_part(update.weights, instructions), sent_part(instructions.weights, instructions))]
        privacy = instructions.privacy
        if privacy.clip_norm is not None:
            delta = clip_by_global_norm(delta, privacy.clip_norm)
            if privacy.local_noise_multiplier > 0:
                rng = np.random.default_rng([instructions.seed, 1])
                delta = add_gaussian_noise(delta, privacy.local_noise_multiplier * privacy.clip_norm, rng)
        if self._residual is not None and instructions.compression == "topk":
            delta = [d + r for d, r in zip(delta, self._residual)]
        payload, sent = encode_delta(delta, instructions.compression, instructions.topk_fraction)
        if instructions.compression == "topk":
            self._residual = [d - s for d, s in zip(delta, sent)]
        if instructions.secure is not None:
            masked = mask_update(self.device_id, sent, instructions.secure)
            return EncodedUpdate(self.device_id, update.num_samples, update.metrics, masked=masked,
                                 control_delta=update.control_delta)
        return EncodedUpdate(self.device_id, update.num_samples, update.metrics, payload=payload,
                             control_delta=update.control_delta)
