"""One federated round, step by step: select, broadcast, collect, aggregate, evaluate."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from devices.messages import ControlVariate, DeviceUpdate, EncodedUpdate, TrainInstructions, Weights, weights_nbytes
from devices.secure_aggregation import SecureAggregationPlan, mask_sum, unflatten, unmask_total
from devices.trainer import ModelReplica
from engine.aggregation import update_problem
from engine.composition import Aggregation, build_aggregation
from engine.config import FederationConfig
from engine.errors import one_line
from engine.evaluation import RoundTestSets
from engine.metrics import RegressionScores, confusion_matrix, regression_scores
from engine.model_defaults import ModelError
from engine.personalization import SharedPart, device_settings, finite_or_none, head_positions, mean_finite
from engine.results import DeviceProblem, DeviceRoundResult, DeviceStatus, RoundResult
from engine.setup import ServerTestSet
from engine.strategies.base import AggregationSkipped, Strategy
from engine.transport import Reply, SecureSum, Transport
from engine.transport_checks import control_delta_problem, decode_update, masked_problem, mean_of_updates, reply_problem

StatusCallback = Callable[[int, DeviceStatus, str], None]


def select_devices(active: Sequence[int], fraction: float, min_devices: int, rng: np.random.Generator) -> list[int]:
    """Sample ``fraction`` of the active devices, but never fewer than ``min_devices``."""
    count = min(len(active), max(min_devices, math.ceil(fraction * len(active))))
    return sorted(int(d) for d in rng.choice(np.asarray(active), size=count, replace=False))


def device_seed(seed: int, server_round: int, device_id: int) -> int:
    """A distinct, reproducible shuffling seed per (run, round, device)."""
    return (seed * 1_000_003 + server_round * 10_007 + device_id) % (2**31)


def local_training_instructions(
    config: FederationConfig, strategy: Strategy | Aggregation, server_round: int, device_id: int, weights: Weights,
    **transport,
) -> TrainInstructions:
    """What a device is asked to do this round; ``transport`` adds privacy, compression or masking settings."""
    options = strategy.local_options()
    control = ControlVariate(options.control_variate, config.momentum) if options.control_variates else None
    return TrainInstructions(
        server_round=server_round,
        weights=weights,
        local_epochs=config.local_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=device_seed(config.seed, server_round, device_id),
        proximal_mu=options.proximal_mu,
        control=control,
        keep_optimizer_state=config.keeps_optimizer_state,
        **transport,
    )


def simulated_time(reply: Reply, slowdown: float) -> float:
    """How long a device's local training takes on the simulated clock: its local steps times its slowdown.

    The unit is one local step of a full-speed device; deterministic, unlike measured seconds on a shared
    machine. A failed device answers at once (0).
    """
    return reply.metrics.steps * slowdown if isinstance(reply, EncodedUpdate) else 0.0


@dataclass
class Arrivals:
    """What came back from the devices of one round."""

    updates: list[EncodedUpdate]
    problems: list[DeviceProblem]
    bytes_down: int = 0  # what the transport sent down, counted as it sent it


class RoundRunner:
    """Runs rounds over a transport (simulated devices in-process, or Flower nodes) with one strategy.

    The strategy, wrapped in the privacy layer the configuration asks for
    (``engine.composition``), decides the devices' instructions and the
    aggregation; secure aggregation is the loop's other aggregation path.
    """

    def __init__(
        self,
        config: FederationConfig,
        transport: Transport,
        evaluator: ModelReplica,
        strategy: Strategy,
        test_set: ServerTestSet,
        on_status: StatusCallback,
    ):
        self.config = config
        self.transport = transport
        self.evaluator = evaluator
        self.strategy = strategy
        self.aggregation = build_aggregation(strategy, config)
        self.test_set = test_set
        self.test_sets = RoundTestSets.of(test_set, config.eval_samples, config.full_eval_every, config.seed)
        self.on_status = on_status
        try:  # FedPer: the devices keep the last Dense layer, the server aggregates the rest
            head = head_positions(evaluator.model) if config.personalize == "fedper" else ()
        except ValueError as error:
            raise ModelError(str(error)) from None
        self.shared = SharedPart(head)
        self.personal = device_settings(config, head)

    # -- selection -------------------------------------------------------------------
    def select(self, server_round: int, active: Sequence[int]) -> list[int]:
        rng = np.random.default_rng([self.config.seed, server_round])
        return select_devices(sorted(active), self.config.fraction, self.config.min_devices, rng)

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
        if self.aggregation.uniform:
            shares = {d: 1.0 for d in peers}  # DP-FedAvg averages uniformly to bound each device's influence
        else:
            shares = {d: float(self.transport.declared_samples(d) or 1) for d in peers}
        total = sum(shares.values())
        secret = self.config.seed * 7919 + server_round
        return {d: SecureAggregationPlan(tuple(peers), secret=secret, weight=shares[d] / total) for d in peers}

    def instructions(
        self, server_round: int, device_id: int, weights: Weights, plan: SecureAggregationPlan | None
    ) -> TrainInstructions:
        config = self.config
        return local_training_instructions(
            config,
            self.aggregation,
            server_round,
            device_id,
            weights,
            privacy=self.aggregation.privacy(),
            compression=config.compression,
            topk_fraction=config.topk_fraction,
            secure=plan,
            personal=self.personal,
        )

    def collect(
        self,
        server_round: int,
        selected: Sequence[int],
        weights: Weights,
        plans: dict[int, SecureAggregationPlan],
        checkpoint: Callable[[int], None],
    ) -> Arrivals:
        """Send the selected devices their instructions and gather their replies, checked, as they arrive."""
        instructions = {d: self.instructions(server_round, d, weights, plans.get(d)) for d in selected}
        for device_id in selected:
            self.on_status(device_id, DeviceStatus.TRAINING, "")
        arrivals = Arrivals([], [])
        arrivals.bytes_down = self.transport.collect(
            instructions, checkpoint, lambda device_id, reply: self._receive(device_id, reply, arrivals)
        )
        arrivals.updates.sort(key=lambda u: u.device_id)
        return arrivals

    def _problem(self, arrivals: Arrivals, problem: DeviceProblem) -> None:
        arrivals.problems.append(problem)
        status = DeviceStatus.REJECTED if problem.kind == "rejected" else DeviceStatus.FAILED
        if problem.kind in ("straggler", "dropped out"):
            status = DeviceStatus.DROPPED
        self.on_status(problem.device_id, status, problem.reason)

    def _receive(self, device_id: int, outcome: Reply, arrivals: Arrivals) -> None:
        if isinstance(outcome, DeviceProblem):
            self._problem(arrivals, outcome)
            return
        if isinstance(outcome, Exception):
            self._problem(arrivals, DeviceProblem(device_id, "failed", one_line(outcome)))
            return
        problem = reply_problem(outcome, self.transport.declared_samples(device_id))
        if problem is not None:
            self._problem(arrivals, DeviceProblem(device_id, "rejected", problem))
            return
        simulated = outcome.metrics.seconds * self.transport.slowdown(device_id)
        deadline = self.config.round_deadline
        if deadline is not None and simulated > deadline:
            reason = f"straggler: needed {simulated:.2f} s (simulated), deadline {deadline:.2f} s"
            self._problem(arrivals, DeviceProblem(device_id, "straggler", reason))
            return
        arrivals.updates.append(outcome)
        self.on_status(device_id, DeviceStatus.SENT, "")

    # -- aggregation ---------------------------------------------------------------------
    def decode(self, update: EncodedUpdate, weights: Weights) -> tuple[DeviceUpdate | None, str | None]:
        """The device's model as the server reconstructs it, or why it is unusable."""
        model, problem = decode_update(update, weights)
        if problem is None and update.control_delta is not None:
            problem = control_delta_problem(update.control_delta, weights)
        if problem is not None:
            return None, problem
        return DeviceUpdate(update.device_id, model, update.num_samples, update.metrics,
                            control_delta=update.control_delta), None

    def aggregate_plain(
        self, server_round: int, weights: Weights, arrivals: Arrivals
    ) -> tuple[Weights, list[EncodedUpdate]]:
        """Decode and validate each update, then let the (wrapped) strategy aggregate the valid ones."""
        if self.aggregation.averages:
            return self.aggregate_mean(server_round, weights, arrivals)
        valid: list[DeviceUpdate] = []
        accepted = []
        for encoded in arrivals.updates:
            update, problem = self.decode(encoded, weights)
            if problem is not None:
                self._problem(arrivals, DeviceProblem(encoded.device_id, "rejected", problem))
                continue
            valid.append(update)
            accepted.append(encoded)
        if not valid:
            return weights, []
        try:
            return self.aggregation.aggregate(server_round, weights, valid), accepted
        except AggregationSkipped as skipped:  # e.g. too few updates for Krum's guarantee
            arrivals.problems.extend(DeviceProblem(u.device_id, "not aggregated", str(skipped)) for u in valid)
            return weights, []

    def aggregate_mean(
        self, server_round: int, weights: Weights, arrivals: Arrivals
    ) -> tuple[Weights, list[EncodedUpdate]]:
        """For strategies that use only the weighted mean: each update is decoded into one scratch model and
        added to a running sum (no model per update), then the mean becomes the next model."""
        usable = []
        for encoded in arrivals.updates:  # what decode() checks besides the model
            problem = None if encoded.control_delta is None else control_delta_problem(encoded.control_delta, weights)
            if problem is not None:
                self._problem(arrivals, DeviceProblem(encoded.device_id, "rejected", problem))
            else:
                usable.append(encoded)
        mean, accepted, rejected = mean_of_updates(usable, weights, self.aggregation.coefficient)
        for encoded, problem in rejected:
            self._problem(arrivals, DeviceProblem(encoded.device_id, "rejected", problem))
        if mean is None:
            return weights, []
        return self.aggregation.from_mean(server_round, weights, mean, len(accepted)), accepted

    def aggregate_secure(
        self, server_round: int, weights: Weights, arrivals: Arrivals, plans: dict[int, SecureAggregationPlan]
    ) -> tuple[Weights, list[EncodedUpdate]]:
        """Sum the masked vectors, remove the masks of devices that never delivered, then aggregate the mean
        (or aggregate the sum the transport's own protocol revealed, e.g. Flower's SecAgg+)."""
        summed = self.transport.secure_sum()
        if summed is not None:
            return self.aggregate_summed(server_round, weights, arrivals, summed)
        size = sum(w.size for w in weights)
        delivered = []
        for update in arrivals.updates:
            problem = masked_problem(update.masked, size)
            if problem is not None:
                self._problem(arrivals, DeviceProblem(update.device_id, "rejected", problem))
            else:
                delivered.append(update)
        if not delivered:
            return weights, []
        survivors = tuple(u.device_id for u in delivered)
        missing = tuple(p for p in plans if p not in survivors)
        # Survivors reveal the masks they shared with devices that dropped (real SecAgg rebuilds them from shares).
        corrections = [mask_sum(d, missing, plans[d].secret, size) for d in survivors]
        total = unmask_total([u.masked for u in delivered], corrections if missing else [])
        share = sum(plans[d].weight for d in survivors)
        return self.aggregate_mean_delta(server_round, weights, unflatten(total / share, weights), delivered,
                                         len(survivors), arrivals)

    def aggregate_summed(
        self, server_round: int, weights: Weights, arrivals: Arrivals, summed: SecureSum
    ) -> tuple[Weights, list[EncodedUpdate]]:
        """The next model from a sum the transport's secure aggregation revealed (its devices' metrics only)."""
        delivered = [u for u in arrivals.updates if u.device_id in summed.devices]
        if summed.mean_delta is None:
            for update in delivered:
                arrivals.problems.append(DeviceProblem(update.device_id, "not aggregated", summed.reason))
            return weights, []
        return self.aggregate_mean_delta(server_round, weights, summed.mean_delta, delivered, len(summed.devices),
                                         arrivals)

    def aggregate_mean_delta(
        self, server_round: int, weights: Weights, mean_delta: Weights, delivered: list[EncodedUpdate],
        count: int, arrivals: Arrivals,
    ) -> tuple[Weights, list[EncodedUpdate]]:
        """The (wrapped) strategy's next model from the securely summed mean delta of ``count`` devices."""
        problem = update_problem(mean_delta, weights)
        if problem is not None:
            reason = f"the masked sum is unusable ({problem}); secure aggregation hides which device sent it"
            for update in delivered:
                arrivals.problems.append(DeviceProblem(update.device_id, "rejected", reason))
            return weights, []
        mean = [(w + np.asarray(d, np.float64)).astype(w.dtype) for w, d in zip(weights, mean_delta)]
        return self.aggregation.from_mean(server_round, weights, mean, count), delivered

    # -- evaluation and the whole round ----------------------------------------------------
    def evaluate(
        self, weights: Weights, server_round: int = 0, last: bool = True
    ) -> tuple[float, float, np.ndarray, int, RegressionScores | None]:
        """Global loss, accuracy, confusion matrix and samples used, on the server's test set or its sample;
        for a regression the loss is the MSE, accuracy NaN, the confusion empty, plus MSE/MAE/R²."""
        test = self.test_sets.for_round(server_round, last)
        self.evaluator.set_weights(weights)
        loss, accuracy, predicted = self.evaluator.evaluate(test.x, test.y)
        if test.task == "regression":
            return loss, accuracy, np.zeros((0, 0), np.int64), len(test.y), regression_scores(test.y, predicted)
        return loss, accuracy, confusion_matrix(test.y, predicted, test.num_classes), len(test.y), None

    def spend_privacy(self, sampling_rate: float) -> float | None:
        """Compose this round's mechanism into the accountant; epsilon so far (None without DP)."""
        return self.aggregation.spend_round(sampling_rate)

    def replay(self, history: Sequence[RoundResult]) -> None:
        """Bring server-side accounting up to date with rounds run before a resume."""
        for result in history:
            self.spend_privacy(result.sampling_rate)

    def run(
        self, server_round: int, weights: Weights, active: Sequence[int], checkpoint: Callable[[int], None],
        last: bool = False,
    ) -> tuple[Weights, RoundResult]:
        """One round; ``last`` (the run's final round) evaluates on the whole test set."""
        started = time.perf_counter()
        selected = self.select(server_round, active)
        answering, dropped = self.drop_out(server_round, selected)
        plans = self.secure_plans(server_round, answering)
        arrivals = self.collect(server_round, answering, weights, plans, checkpoint)
        arrivals.problems[:0] = dropped
        trained = time.perf_counter()
        shared = self.shared.of(weights)  # what the devices sent: the whole model, or FedPer's body
        if self.config.secure_aggregation:
            new_shared, accepted = self.aggregate_secure(server_round, shared, arrivals, plans)
        else:
            new_shared, accepted = self.aggregate_plain(server_round, shared, arrivals)
        new_weights = self.shared.merged(new_shared, weights)
        epsilon = self.spend_privacy(len(selected) / len(active))
        loss, accuracy, confusion, test_samples, scores = self.evaluate(new_weights, server_round, last)
        finished = time.perf_counter()
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
            bytes_down=arrivals.bytes_down,
            bytes_up=sum(u.nbytes for u in arrivals.updates),
            confusion=confusion,
            epsilon=epsilon,
            raw_bytes_up=weights_nbytes(shared) * len(arrivals.updates),
            sampling_rate=len(selected) / len(active),
            test_samples=test_samples,
            global_mae=scores.mae if scores else None,
            global_r2=scores.r2 if scores else None,
            personalized_accuracy=mean_finite([u.metrics.personalized_accuracy for u in accepted]),
            device_global_accuracy=mean_finite([u.metrics.received_accuracy for u in accepted]),
            simulated_time=max((simulated_time(u, self.transport.slowdown(u.device_id)) for u in accepted),
                               default=0.0),
            kept=self.strategy.kept_devices() if accepted else None,
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
            simulated_seconds=m.seconds * self.transport.slowdown(update.device_id),
            bytes_up=update.nbytes,
            personalized_accuracy=finite_or_none(m.personalized_accuracy),
            personalized_loss=finite_or_none(m.personalized_loss),
        )
