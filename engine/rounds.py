"""One federated round, step by step: select, broadcast, collect, aggregate, evaluate."""

from __future__ import annotations

import math
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from devices.codec import decode_delta, encode_delta
from devices.cohort import Outcome, plan_cohorts
from devices.device import Device
from devices.messages import (
    DeviceUpdate,
    EncodedUpdate,
    PrivacySettings,
    TrainInstructions,
    Weights,
    weights_nbytes,
)
from devices.pool import WorkerPool
from devices.privacy import add_gaussian_noise
from devices.secure_aggregation import SecureAggregationPlan, mask_sum, unflatten, unmask_total
from devices.trainer import ModelReplica, TrainingStopped
from engine.aggregation import update_problem, weighted_average
from engine.config import FederationConfig
from engine.metrics import RegressionScores, confusion_matrix, regression_scores
from engine.privacy import PrivacyAccountant
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


def local_training_instructions(
    config: FederationConfig, strategy: Strategy, server_round: int, device_id: int, weights: Weights, **transport
) -> TrainInstructions:
    """What a device is asked to do this round; ``transport`` adds privacy, compression or masking settings."""
    return TrainInstructions(
        server_round=server_round,
        weights=weights,
        local_epochs=config.local_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=device_seed(config.seed, server_round, device_id),
        proximal_mu=strategy.local_options().proximal_mu,
        **transport,
    )


def task_outcomes(future: Future, count: int) -> list[Outcome]:
    """What a finished training task yields for each of its ``count`` devices; a stop is re-raised."""
    error = future.exception()
    if isinstance(error, TrainingStopped):
        raise error
    if error is not None:
        return [error] * count
    result = future.result()
    return result if isinstance(result, list) else [result]


@dataclass(frozen=True)
class ServerTestSet:
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    task: str = "classification"


@dataclass
class Arrivals:
    """What came back from the devices of one round."""

    updates: list[EncodedUpdate]
    problems: list[DeviceProblem]


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
        self.accountant = PrivacyAccountant(config.dp_delta) if config.uses_dp else None

    # -- selection -------------------------------------------------------------------
    def select(self, server_round: int, active: Sequence[int]) -> list[int]:
        rng = np.random.default_rng([self.config.seed, server_round])
        return select_devices(active, self.config.fraction, self.config.min_devices, rng)

    def drop_out(self, server_round: int, selected: Sequence[int]) -> tuple[list[int], list[DeviceProblem]]:
        """Selected devices that do not answer this round (simulated unavailability)."""
        rng = np.random.default_rng([self.config.seed, server_round, 1])
        unavailable = rng.random(len(selected)) < self.config.dropout
        dropped = [DeviceProblem(d, "dropped out", "did not answer this round (simulated dropout)")
                   for d, gone in zip(selected, unavailable) if gone]
        for problem in dropped:
            self.on_status(problem.device_id, DeviceStatus.DROPPED, problem.reason)
        return [d for d, gone in zip(selected, unavailable) if not gone], dropped

    # -- broadcast and collect --------------------------------------------------------
    def secure_plans(self, server_round: int, peers: Sequence[int]) -> dict[int, SecureAggregationPlan]:
        """Each masking device's plan for this round (none without secure aggregation)."""
        if not self.config.secure_aggregation:
            return {}
        if self.config.uses_dp:
            shares = {d: 1.0 for d in peers}  # DP-FedAvg averages uniformly to bound each device's influence
        else:
            shares = {d: float(self.devices[d].data.num_train) for d in peers}
        total = sum(shares.values())
        secret = self.config.seed * 7919 + server_round
        return {d: SecureAggregationPlan(tuple(peers), secret=secret, weight=shares[d] / total) for d in peers}

    def instructions(
        self, server_round: int, device_id: int, weights: Weights, plan: SecureAggregationPlan | None
    ) -> TrainInstructions:
        config = self.config
        return local_training_instructions(
            config,
            self.strategy,
            server_round,
            device_id,
            weights,
            privacy=PrivacySettings(config.clip_norm, config.local_noise_multiplier),
            compression=config.compression,
            topk_fraction=config.topk_fraction,
            secure=plan,
        )

    def collect(
        self,
        server_round: int,
        selected: Sequence[int],
        weights: Weights,
        plans: dict[int, SecureAggregationPlan],
        checkpoint: Callable[[int], None],
    ) -> Arrivals:
        """Broadcast to the selected devices and gather their updates and failures as they arrive."""
        instructions = {d: self.instructions(server_round, d, weights, plans.get(d)) for d in selected}
        checkpoints = {d: self._device_checkpoint(d, checkpoint) for d in selected}
        for device_id in selected:
            self.on_status(device_id, DeviceStatus.TRAINING, "")
        futures: dict[Future, list[int]] = {}
        for group in self.training_groups(instructions):
            if self.pool.stacks:
                future = self.pool.submit_cohort(
                    [self.devices[d] for d in group], [instructions[d] for d in group], [checkpoints[d] for d in group]
                )
            else:
                (device_id,) = group
                future = self.pool.submit(self.devices[device_id], instructions[device_id], checkpoints[device_id])
            futures[future] = group
        arrivals = Arrivals([], [])
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    for device_id, outcome in zip(futures[future], task_outcomes(future, len(futures[future]))):
                        self._receive(device_id, outcome, arrivals)
        except TrainingStopped:
            for future in pending:
                future.cancel()
            wait(pending)
            raise
        arrivals.updates.sort(key=lambda u: u.device_id)
        return arrivals

    def training_groups(self, instructions: dict[int, TrainInstructions]) -> list[list[int]]:
        """Devices trained together: stacks of similar length, or one device at a time."""
        if not self.pool.stacks:
            return [[d] for d in instructions]
        steps = {d: self.devices[d].local_steps(instr) for d, instr in instructions.items()}
        return plan_cohorts(steps, self.config.stack_width, self.pool.workers)

    def _device_checkpoint(self, device_id: int, checkpoint: Callable[[int], None]) -> Callable[[int], None]:
        def device_checkpoint(steps: int) -> None:
            checkpoint(steps)
            self.on_progress(device_id, steps)

        return device_checkpoint

    def _receive(self, device_id: int, outcome: Outcome, arrivals: Arrivals) -> None:
        if isinstance(outcome, Exception):
            arrivals.problems.append(DeviceProblem(device_id, "failed", f"{type(outcome).__name__}: {outcome}"))
            self.on_status(device_id, DeviceStatus.FAILED, str(outcome))
            return
        simulated = outcome.metrics.seconds * self.devices[device_id].slowdown
        deadline = self.config.round_deadline
        if deadline is not None and simulated > deadline:
            reason = f"straggler: needed {simulated:.2f} s (simulated), deadline {deadline:.2f} s"
            arrivals.problems.append(DeviceProblem(device_id, "straggler", reason))
            self.on_status(device_id, DeviceStatus.DROPPED, reason)
            return
        arrivals.updates.append(outcome)
        self.on_status(device_id, DeviceStatus.SENT, "")

    # -- aggregation ---------------------------------------------------------------------
    def decode(self, update: EncodedUpdate, weights: Weights) -> tuple[DeviceUpdate | None, str | None]:
        """The device's model as the server reconstructs it, or why it is unusable."""
        delta = decode_delta(update.payload)
        problem = update_problem(delta, weights)
        if problem is not None:
            return None, problem
        model = [(w + d).astype(np.float32) for w, d in zip(weights, delta)]
        return DeviceUpdate(update.device_id, model, update.num_samples, update.metrics), None

    def add_central_noise(self, server_round: int, mean_delta: Weights, count: int) -> Weights:
        """DP-FedAvg: Gaussian noise of stddev z * C / n on the mean of n clipped updates."""
        if self.config.noise_multiplier <= 0:
            return mean_delta
        stddev = self.config.noise_multiplier * self.config.clip_norm / count
        return add_gaussian_noise(mean_delta, stddev, np.random.default_rng([self.config.seed, server_round, 2]))

    def aggregate_plain(
        self, server_round: int, weights: Weights, arrivals: Arrivals
    ) -> tuple[Weights, list[EncodedUpdate]]:
        """Decode and validate each update, then let the strategy aggregate the valid ones."""
        valid: list[DeviceUpdate] = []
        accepted = []
        for encoded in arrivals.updates:
            update, problem = self.decode(encoded, weights)
            if problem is not None:
                arrivals.problems.append(DeviceProblem(encoded.device_id, "rejected", problem))
                self.on_status(encoded.device_id, DeviceStatus.REJECTED, problem)
                continue
            valid.append(update)
            accepted.append(encoded)
        if not valid:
            return weights, []
        if not self.config.uses_dp:
            return self.strategy.aggregate(server_round, weights, valid), accepted
        mean = weighted_average([u.weights for u in valid], [1.0] * len(valid))
        mean_delta = [m - w for m, w in zip(mean, weights)]
        noisy = self.add_central_noise(server_round, mean_delta, len(valid))
        return self.strategy.from_mean(server_round, weights, [w + d for w, d in zip(weights, noisy)]), accepted

    def aggregate_secure(
        self, server_round: int, weights: Weights, arrivals: Arrivals, plans: dict[int, SecureAggregationPlan]
    ) -> tuple[Weights, list[EncodedUpdate]]:
        """Sum the masked vectors, remove the masks of devices that never delivered, then aggregate the mean."""
        if not arrivals.updates:
            return weights, []
        survivors = tuple(u.device_id for u in arrivals.updates)
        missing = tuple(p for p in plans if p not in survivors)
        size = arrivals.updates[0].masked.size
        # Survivors reveal the masks they shared with devices that dropped (real SecAgg rebuilds them from shares).
        corrections = [mask_sum(d, missing, plans[d].secret, size) for d in survivors]
        total = unmask_total([u.masked for u in arrivals.updates], corrections if missing else [])
        share = sum(plans[d].weight for d in survivors)
        mean_delta = unflatten(total / share, weights)
        problem = update_problem(mean_delta, weights)
        if problem is not None:
            reason = f"the masked sum is unusable ({problem}); secure aggregation hides which device sent it"
            for update in arrivals.updates:
                arrivals.problems.append(DeviceProblem(update.device_id, "rejected", reason))
            return weights, []
        noisy = self.add_central_noise(server_round, mean_delta, len(survivors))
        return self.strategy.from_mean(server_round, weights, [w + d for w, d in zip(weights, noisy)]), arrivals.updates

    # -- evaluation and the whole round ----------------------------------------------------
    def evaluate(self, weights: Weights) -> tuple[float, float, np.ndarray, RegressionScores | None]:
        """Global loss, accuracy and confusion matrix on the server's held-out test set; for a
        regression the loss is the MSE, accuracy NaN, the confusion empty, plus MSE/MAE/R²."""
        self.evaluator.set_weights(weights)
        loss, accuracy, predicted = self.evaluator.evaluate(self.test_set.x, self.test_set.y)
        if self.test_set.task == "regression":
            return loss, accuracy, np.zeros((0, 0), np.int64), regression_scores(self.test_set.y, predicted)
        return loss, accuracy, confusion_matrix(self.test_set.y, predicted, self.test_set.num_classes), None

    def spend_privacy(self, sampling_rate: float) -> float | None:
        """Compose this round's mechanism into the accountant; epsilon so far (None without DP)."""
        if self.accountant is None:
            return None
        if self.config.noise_multiplier > 0:
            return self.accountant.spend_round(self.config.noise_multiplier, sampling_rate)
        return self.accountant.spend_round(self.config.local_noise_multiplier, 1.0)

    def replay(self, history: Sequence[RoundResult]) -> None:
        """Bring server-side accounting up to date with rounds run before a resume."""
        for result in history:
            self.spend_privacy(result.sampling_rate)

    def run(
        self, server_round: int, weights: Weights, active: Sequence[int], checkpoint: Callable[[int], None]
    ) -> tuple[Weights, RoundResult]:
        started = time.perf_counter()
        selected = self.select(server_round, active)
        answering, dropped = self.drop_out(server_round, selected)
        plans = self.secure_plans(server_round, answering)
        arrivals = self.collect(server_round, answering, weights, plans, checkpoint)
        arrivals.problems[:0] = dropped
        trained = time.perf_counter()
        if self.config.secure_aggregation:
            new_weights, accepted = self.aggregate_secure(server_round, weights, arrivals, plans)
        else:
            new_weights, accepted = self.aggregate_plain(server_round, weights, arrivals)
        epsilon = self.spend_privacy(len(selected) / len(active))
        loss, accuracy, confusion, scores = self.evaluate(new_weights)
        finished = time.perf_counter()
        download = len(encode_delta(weights, "none")[0])
        return new_weights, RoundResult(
            round=server_round,
            global_loss=loss,
            global_accuracy=accuracy,
            seconds=finished - started,
            train_seconds=trained - started,
            eval_seconds=finished - trained,
            selected=tuple(selected),
            devices=tuple(self._device_result(u) for u in accepted),
            problems=tuple(sorted(arrivals.problems, key=lambda p: p.device_id)),
            bytes_down=download * len(answering),
            bytes_up=sum(u.nbytes for u in arrivals.updates),
            confusion=confusion,
            epsilon=epsilon,
            raw_bytes_up=weights_nbytes(weights) * len(arrivals.updates),
            sampling_rate=len(selected) / len(active),
            global_mae=scores.mae if scores else None,
            global_r2=scores.r2 if scores else None,
        )

    def _device_result(self, update: EncodedUpdate) -> DeviceRoundResult:
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
            simulated_seconds=m.seconds * self.devices[update.device_id].slowdown,
            bytes_up=update.nbytes,
        )
