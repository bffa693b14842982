"""A Flower ``Strategy`` that runs our rounds: the engine decides, Flower only carries messages.

Per round, :class:`EngineStrategy` does what ``engine.rounds.RoundRunner`` does
in-process, with Flower messages in place of the worker pool:

- select: the active partitions (connected nodes minus deactivated partition
  ids) sampled with ``engine.rounds.select_devices`` and the engine's seeding,
  so a Flower run picks the same devices as an in-process run;
- broadcast: one train message per selected node carrying ``TrainInstructions``
  (``engine.rounds.device_seed`` for the local shuffling seed);
- collect: replies become ``DeviceUpdate``s; error replies and missing replies
  are ``failed``, updates that ``engine.aggregation.update_problem`` refuses
  are ``rejected`` (reported, never aggregated);
- aggregate: ``engine.strategies.build_strategy(name).aggregate(...)``.

Central evaluation (``ModelReplica.evaluate`` on the server's test set) is in
:mod:`flower_app.server_app`, which closes each round with
:meth:`EngineStrategy.finish_round` and gets a :class:`RoundReport`.

Not carried over Flower yet (run-config keys for them do not exist): secure
aggregation, differential privacy, update compression and the simulated
dropout/straggler settings; devices send their full trained weights.

Which partition a node holds is asked once per node with a ``query`` message
(Flower does not expose node configs to the server).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from devices.messages import DeviceUpdate, TrainInstructions, Weights, weights_nbytes
from engine.aggregation import update_problem
from engine.results import DeviceProblem
from engine.rounds import local_training_instructions, select_devices
from engine.strategies import AggregationSkipped
from engine.strategies import Strategy as EngineAggregator
from flower_app import records
from flower_app.config import ServerSettings

QUERY_TIMEOUT = 60.0
WAIT_POLL_SECONDS = 1.0


class NotEnoughDevices(RuntimeError):
    """Fewer active devices than ``min-devices`` for longer than ``wait-timeout``."""


class Roster:
    """Which partition each connected node holds, learnt by asking each new node once."""

    def __init__(self, query_timeout: float = QUERY_TIMEOUT):
        self.query_timeout = query_timeout
        self.partition_of: dict[int, int] = {}  # node id -> partition id
        self._unusable: set[int] = set()  # nodes whose query reply was an error
        self._warned_duplicates: set[int] = set()

    def refresh(self, grid: Grid) -> dict[int, int]:
        """Partition id -> node id of the connected nodes (the lowest node id wins a shared partition)."""
        connected = set(grid.get_node_ids())
        for node in set(self.partition_of) - connected:
            log(INFO, "node %s (partition %s) disconnected", node, self.partition_of.pop(node))
        new = sorted(connected - set(self.partition_of) - self._unusable)
        if new:
            queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in new]
            for reply in grid.send_and_receive(queries, timeout=self.query_timeout):
                node = reply.metadata.src_node_id
                if reply.has_error():
                    self._unusable.add(node)
                    log(WARNING, "node %s cannot take part (fix its node config and restart it): %s",
                        node, reply.error.reason)
                    continue
                partition = int(records.node_from(reply.content)[records.PARTITION_ID])
                self.partition_of[node] = partition
                log(INFO, "node %s holds partition %s", node, partition)
        nodes: dict[int, int] = {}
        for node, partition in sorted(self.partition_of.items()):
            if partition in nodes and partition not in self._warned_duplicates:
                self._warned_duplicates.add(partition)
                log(WARNING, "nodes %s and %s both hold partition %s; only %s is used",
                    nodes[partition], node, partition, nodes[partition])
            nodes.setdefault(partition, node)
        return nodes


@dataclass(frozen=True)
class RoundReport:
    """One finished round, as a dashboard wants it (``to_json_dict`` is the results-file line)."""

    round: int
    global_loss: float
    global_accuracy: float
    seconds: float  # selection to central evaluation, like the in-process engine's RoundResult.seconds
    train_seconds: float
    eval_seconds: float
    selected: tuple[int, ...]  # partition ids
    nodes: dict[int, int]  # selected partition id -> Flower node id
    deactivated: frozenset[int]
    updates: tuple[DeviceUpdate, ...]  # the valid ones, aggregated
    problems: tuple[DeviceProblem, ...]  # failed (error or no reply) or rejected (invalid update)
    bytes_down: int
    bytes_up: int
    confusion: np.ndarray

    def to_json_dict(self, run_id: int | None = None) -> dict:
        number = records.finite_or_none
        return {
            "run_id": run_id,
            "round": self.round,
            "global_accuracy": number(self.global_accuracy),
            "global_loss": number(self.global_loss),
            "seconds": self.seconds,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "selected": list(self.selected),
            "deactivated": sorted(self.deactivated),
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "devices": {
                str(u.device_id): {
                    "node_id": self.nodes.get(u.device_id),
                    "samples": u.num_samples,
                    "train_loss": number(u.metrics.train_loss),
                    "train_accuracy": number(u.metrics.train_accuracy),
                    "received_loss": number(u.metrics.received_loss),
                    "received_accuracy": number(u.metrics.received_accuracy),
                    "loss": number(u.metrics.local_loss),
                    "accuracy": number(u.metrics.local_accuracy),
                    "steps": u.metrics.steps,
                    "seconds": u.metrics.seconds,
                    "bytes_up": u.nbytes,
                    **_json_extras(u.extras),  # e.g. setup_seconds
                }
                for u in self.updates
            },
            "problems": [
                {"partition_id": p.device_id, "node_id": self.nodes.get(p.device_id), "kind": p.kind,
                 "reason": p.reason}
                for p in self.problems
            ],
            "confusion": np.asarray(self.confusion).tolist(),
        }


def _json_extras(extras: dict) -> dict:
    return {k: records.finite_or_none(v) if isinstance(v, (int, float)) else v for k, v in extras.items()}


@dataclass
class RoundState:
    """The round in progress, from selection to the aggregated model."""

    server_round: int
    started: float
    weights: Weights  # the global model the round started from
    nodes: dict[int, int]  # selected partition id -> node id
    deactivated: frozenset[int]
    updates: list[DeviceUpdate] = field(default_factory=list)
    problems: list[DeviceProblem] = field(default_factory=list)
    trained: float | None = None


class EngineStrategy(Strategy):
    """Flower's round loop (``Strategy.start``) driving the engine's selection, validation and aggregation."""

    def __init__(
        self,
        settings: ServerSettings,
        aggregator: EngineAggregator,
        roster: Roster | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.settings = settings
        self.config = settings.federation
        self.aggregator = aggregator
        self.roster = roster or Roster()
        self.clock = clock
        self.sleep = sleep
        self.current: RoundState | None = None
        self.history: list[RoundReport] = []

    def summary(self) -> None:
        c = self.config
        log(INFO, "\t├──> Engine strategy %r, model %r on %s", self.aggregator.name, c.model, c.dataset)
        log(INFO, "\t├──> Sampling: fraction %.2f of the active partitions, at least %d",
            c.fraction, c.min_devices)
        log(INFO, "\t└──> Local training: %d epoch(s), batch %d, %s lr %g, seed %d",
            c.local_epochs, c.batch_size, c.optimizer, c.learning_rate, c.seed)

    # -- selection -----------------------------------------------------------------
    def active_partitions(self, grid: Grid) -> tuple[dict[int, int], frozenset[int]]:
        """Connected, not deactivated partitions (id -> node id); waits until there are ``min-devices``."""
        deadline = self.clock() + self.settings.wait_timeout
        last_count = None
        while True:
            nodes = self.roster.refresh(grid)
            deactivated = self.settings.deactivated_now()
            active = {p: n for p, n in nodes.items() if p not in deactivated}
            if len(active) >= self.config.min_devices:
                return active, deactivated
            if self.clock() >= deadline:
                raise NotEnoughDevices(
                    f"only {len(active)} active device(s) after waiting {self.settings.wait_timeout:g} s; "
                    f"min-devices is {self.config.min_devices}"
                )
            if len(active) != last_count:
                last_count = len(active)
                log(INFO, "Waiting for devices: %d active (%d connected, %d deactivated), at least %d needed.",
                    len(active), len(nodes), len(deactivated & set(nodes)), self.config.min_devices)
            self.sleep(WAIT_POLL_SECONDS)

    def select(self, server_round: int, active: Iterable[int]) -> list[int]:
        """The engine's selection (``RoundRunner.select``): same seed, same devices."""
        rng = np.random.default_rng([self.config.seed, server_round])
        return select_devices(sorted(active), self.config.fraction, self.config.min_devices, rng)

    def instructions(self, server_round: int, partition_id: int, weights: Weights) -> TrainInstructions:
        """The engine's instructions for this device and round (same seeds, same FedProx term)."""
        return local_training_instructions(self.config, self.aggregator, server_round, partition_id, weights)

    # -- Flower's Strategy interface ----------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        active, deactivated = self.active_partitions(grid)
        selected = self.select(server_round, active)
        weights = records.to_weights(arrays)
        self.current = RoundState(
            server_round=server_round,
            started=self.clock(),
            weights=weights,
            nodes={p: active[p] for p in selected},
            deactivated=deactivated,
        )
        log(INFO, "configure_train: partitions %s of %d active", selected, len(active))
        return [
            Message(
                records.instructions_content(self.instructions(server_round, p, weights), arrays),
                dst_node_id=active[p],
                message_type=MessageType.TRAIN,
                group_id=str(server_round),
            )
            for p in selected
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        state = self.current
        if state is None or state.server_round != server_round:
            raise RuntimeError(f"aggregate_train for round {server_round} without configure_train")
        partition_of = {node: p for p, node in state.nodes.items()}
        answered = set()
        for reply in replies:
            partition = partition_of.get(reply.metadata.src_node_id)
            if partition is None or partition in answered:
                continue
            answered.add(partition)
            if reply.has_error():
                state.problems.append(DeviceProblem(partition, "failed", reply.error.reason))
                continue
            try:
                update = records.update_from(reply.content, partition)
            except (KeyError, TypeError, ValueError) as error:
                state.problems.append(DeviceProblem(partition, "rejected", f"malformed reply: {error!r}"))
                continue
            reason = update_problem(update.weights, state.weights)
            if reason is not None:
                state.problems.append(DeviceProblem(partition, "rejected", reason))
                continue
            state.updates.append(update)
        for partition in sorted(set(state.nodes) - answered):
            state.problems.append(
                DeviceProblem(partition, "failed", f"no reply within {self.settings.round_timeout:g} s")
            )
        state.updates.sort(key=lambda u: u.device_id)
        new_weights = None
        try:
            if state.updates:
                new_weights = self.aggregator.aggregate(server_round, state.weights, state.updates)
        except AggregationSkipped as skipped:  # e.g. too few updates for Krum's guarantee: keep the model
            state.problems.extend(DeviceProblem(u.device_id, "not aggregated", str(skipped)) for u in state.updates)
            state.updates, new_weights = [], None
        state.problems.sort(key=lambda p: p.device_id)
        for problem in state.problems:
            log(WARNING, "partition %s %s: %s", problem.device_id, problem.kind, problem.reason)
        state.trained = self.clock()
        if new_weights is None:
            return None, MetricRecord({"devices": 0, "problems": len(state.problems)})
        samples = sum(u.num_samples for u in state.updates)
        metrics = MetricRecord(
            {
                "devices": len(state.updates),
                "problems": len(state.problems),
                "train-loss": sum(u.metrics.train_loss * u.num_samples for u in state.updates) / samples,
                "train-accuracy": sum(u.metrics.train_accuracy * u.num_samples for u in state.updates) / samples,
            }
        )
        return records.to_arrays(new_weights), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # the devices already report their local test accuracy with every update

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    # -- the round's record ------------------------------------------------------------
    def finish_round(self, global_loss: float, global_accuracy: float, confusion: np.ndarray) -> RoundReport:
        """Close the round in progress with its central evaluation."""
        state = self.current
        if state is None or state.trained is None:
            raise RuntimeError("finish_round before aggregate_train")
        finished = self.clock()
        report = RoundReport(
            round=state.server_round,
            global_loss=float(global_loss),
            global_accuracy=float(global_accuracy),
            seconds=finished - state.started,
            train_seconds=state.trained - state.started,
            eval_seconds=finished - state.trained,
            selected=tuple(sorted(state.nodes)),
            nodes=dict(state.nodes),
            deactivated=state.deactivated,
            updates=tuple(state.updates),
            problems=tuple(state.problems),
            bytes_down=weights_nbytes(state.weights) * len(state.nodes),
            bytes_up=sum(u.nbytes for u in state.updates),
            confusion=confusion,
        )
        self.history.append(report)
        return report
