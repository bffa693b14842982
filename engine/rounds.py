"""One federated round, step by step: select, broadcast, collect, aggregate, evaluate."""

from __future__ import annotations

import math
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from devices.device import Device
from devices.messages import DeviceUpdate, TrainInstructions, Weights, weights_nbytes
from devices.pool import WorkerPool
from devices.trainer import ModelReplica, TrainingStopped
from engine.aggregation import update_problem
from engine.config import FederationConfig
from engine.metrics import confusion_matrix
from engine.results import DeviceProblem, DeviceRoundResult, DeviceStatus, RoundResult
from engine.strategies.base import Strategy

StatusCallback = Callable[[int, DeviceStatus, str], None]
ProgressCallback = Callable[[int, int], None]


def select_devices(active: Sequence[int], fraction: float, min_devices: int, rng: np.random.Generator) -> list[int]:
    """Sample ``fraction`` of the active devices, but never fewer than ``min_devices``."""
    count = min(len(active), max(min_devices, math.ceil(fraction * len(active))))
    return sorted(int(d) for d in rng.choice(np.asarray(active), size=count, replace=False))


def device_seed(seed: int, server_round: int, device_id: int) -> int:
    """A distinct, reproducible shuffling seed per (run, round, device)."""
    return (seed * 1_000_003 + server_round * 10_007 + device_id) % (2**31)


@dataclass(frozen=True)
class ServerTestSet:
    x: np.ndarray
    y: np.ndarray
    num_classes: int


class RoundRunner:
    """Runs rounds against a fixed set of devices, a worker pool and a strategy."""

    def __init__(
        self,
        config: FederationConfig,
        devices: Sequence[Device],
        pool: WorkerPool,
        evaluator: ModelReplica,
        strategy: Strategy,
        test_set: ServerTestSet,
        on_status: StatusCallback,
        on_progress: ProgressCallback,
    ):
        self.config = config
        self.devices = devices
        self.pool = pool
        self.evaluator = evaluator
        self.strategy = strategy
        self.test_set = test_set
        self.on_status = on_status
        self.on_progress = on_progress

    def select(self, server_round: int, active: Sequence[int]) -> list[int]:
        rng = np.random.default_rng([self.config.seed, server_round])
        return select_devices(active, self.config.fraction, self.config.min_devices, rng)

    def instructions(self, server_round: int, device_id: int, weights: Weights) -> TrainInstructions:
        return TrainInstructions(
            server_round=server_round,
            weights=weights,
            local_epochs=self.config.local_epochs,
            batch_size=self.config.batch_size,
            learning_rate=self.config.learning_rate,
            seed=device_seed(self.config.seed, server_round, device_id),
        )

    def collect(
        self, server_round: int, selected: Sequence[int], weights: Weights, checkpoint: Callable[[int], None]
    ) -> tuple[list[DeviceUpdate], list[DeviceProblem]]:
        """Broadcast to the selected devices and gather valid updates and problems as they arrive."""
        futures: dict[Future, int] = {}
        for device_id in selected:
            def device_checkpoint(steps: int, device_id: int = device_id) -> None:
                checkpoint(steps)
                self.on_progress(device_id, steps)

            instructions = self.instructions(server_round, device_id, weights)
            self.on_status(device_id, DeviceStatus.TRAINING, "")
            futures[self.pool.submit(self.devices[device_id], instructions, device_checkpoint)] = device_id
        updates, problems = [], []
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    device_id = futures[future]
                    error = future.exception()
                    if isinstance(error, TrainingStopped):
                        raise error
                    if error is not None:
                        problems.append(DeviceProblem(device_id, "failed", f"{type(error).__name__}: {error}"))
                        self.on_status(device_id, DeviceStatus.FAILED, str(error))
                        continue
                    update = future.result()
                    reason = update_problem(update.weights, weights)
                    if reason is not None:
                        problems.append(DeviceProblem(device_id, "rejected", reason))
                        self.on_status(device_id, DeviceStatus.REJECTED, reason)
                        continue
                    updates.append(update)
                    self.on_status(device_id, DeviceStatus.SENT, "")
        except TrainingStopped:
            for future in pending:
                future.cancel()
            wait(pending)
            raise
        updates.sort(key=lambda u: u.device_id)
        return updates, problems

    def evaluate(self, weights: Weights) -> tuple[float, float, np.ndarray]:
        """Global loss, accuracy and confusion matrix on the server's held-out test set."""
        self.evaluator.set_weights(weights)
        loss, accuracy, predicted = self.evaluator.evaluate(self.test_set.x, self.test_set.y)
        return loss, accuracy, confusion_matrix(self.test_set.y, predicted, self.test_set.num_classes)

    def run(
        self, server_round: int, weights: Weights, active: Sequence[int], checkpoint: Callable[[int], None]
    ) -> tuple[Weights, RoundResult]:
        started = time.perf_counter()
        selected = self.select(server_round, active)
        updates, problems = self.collect(server_round, selected, weights, checkpoint)
        trained = time.perf_counter()
        new_weights = self.strategy.aggregate(server_round, weights, updates) if updates else weights
        loss, accuracy, confusion = self.evaluate(new_weights)
        finished = time.perf_counter()
        return new_weights, RoundResult(
            round=server_round,
            global_loss=loss,
            global_accuracy=accuracy,
            seconds=finished - started,
            train_seconds=trained - started,
            eval_seconds=finished - trained,
            selected=tuple(selected),
            devices=tuple(_device_result(u) for u in updates),
            problems=tuple(problems),
            bytes_down=weights_nbytes(weights) * len(selected),
            bytes_up=sum(u.nbytes for u in updates),
            confusion=confusion,
        )


def _device_result(update: DeviceUpdate) -> DeviceRoundResult:
    m = update.metrics
    return DeviceRoundResult(
        device_id=update.device_id,
        samples=update.num_samples,
        train_loss=m.train_loss,
        train_accuracy=m.train_accuracy,
        received_accuracy=m.received_accuracy,
        accuracy=m.local_accuracy,
        loss=m.local_loss,
        seconds=m.seconds,
        bytes_up=update.nbytes,
    )
