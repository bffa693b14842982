"""The Flower transport: the engine's round loop talking to SuperNodes through a ServerApp's ``Grid``.

:class:`GridTransport` is what ``engine.transport.InProcessTransport`` is for
simulated devices: it delivers each selected device's ``TrainInstructions``
as a Flower ``train`` message and hands every reply back to
``engine.rounds.RoundRunner`` as an ``EncodedUpdate`` (checked there like any
other) or a ``DeviceProblem``: an error reply, no reply within
``round-timeout``, or a reply :func:`flower_app.records.update_from` cannot
read. Under secure aggregation a round is Flower's SecAgg+
(:mod:`flower_app.secagg`): the loop gets each device's metrics and only the
sum of their updates (:meth:`GridTransport.secure_sum`). Device ids are
partition ids; :class:`Roster` learns which node holds which partition (and
how many samples it declares) by asking each new node once with a ``query``
message. A node whose query reply is unusable is
refused (listed in :attr:`Roster.refused`, never selected); it never ends the
run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from devices.messages import TrainInstructions
from engine.results import DeviceProblem
from engine.transport import Receive, Reply, SecureSum
from engine.transport_checks import MAX_SAMPLES
from flower_app import records, secagg
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
        self.declared: dict[int, int] = {}  # node id -> training samples it says it holds
        self.refused: dict[int, str] = {}  # node id -> why it cannot take part
        self._warned_duplicates: set[int] = set()

    def _learn(self, reply: Message) -> None:
        node = reply.metadata.src_node_id
        if reply.has_error():
            self.refused[node] = f"its query failed: {reply.error.reason}"[:300]
        else:
            answer = records.node_from(reply.content)
            if isinstance(answer, str):
                self.refused[node] = answer
            elif answer[1] > MAX_SAMPLES:
                self.refused[node] = f"it declares {answer[1]} training samples, more than {MAX_SAMPLES}"
            else:
                self.partition_of[node], self.declared[node] = answer
                log(INFO, "node %s holds partition %s (%s samples)", node, *answer)
                return
        log(WARNING, "node %s cannot take part (fix it and restart it): %s", node, self.refused[node])

    def refresh(self, grid: Grid) -> dict[int, int]:
        """Partition id -> node id of the connected nodes (the lowest node id wins a shared partition)."""
        connected = set(grid.get_node_ids())
        for node in set(self.partition_of) - connected:
            log(INFO, "node %s (partition %s) disconnected", node, self.partition_of.pop(node))
        new = sorted(connected - set(self.partition_of) - set(self.refused))
        if new:
            queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in new]
            for reply in grid.send_and_receive(queries, timeout=self.query_timeout):
                if reply.metadata.src_node_id in new:
                    self._learn(reply)
        nodes: dict[int, int] = {}
        for node, partition in sorted(self.partition_of.items()):
            if partition in nodes and partition not in self._warned_duplicates:
                self._warned_duplicates.add(partition)
                log(WARNING, "nodes %s and %s both hold partition %s; only %s is used",
                    nodes[partition], node, partition, nodes[partition])
            nodes.setdefault(partition, node)
        return nodes


class GridTransport:
    """Train messages to the nodes holding the selected partitions; their replies back to the round loop."""

    def __init__(
        self,
        grid: Grid,
        settings: ServerSettings,
        roster: Roster | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.grid = grid
        self.settings = settings
        self.roster = roster or Roster()
        self.clock = clock
        self.sleep = sleep
        self.nodes: dict[int, int] = {}  # partition id -> node id, as of the last refresh
        self.extras: dict[int, dict] = {}  # partition id -> extra metrics of its last reply (e.g. setup_seconds)
        self._secure_sum: SecureSum | None = None  # the last round's, under secure aggregation
        self._in_flight: dict[str, tuple[int, float]] = {}  # start()ed message id -> (partition, pushed at)

    # -- what the round loop asks -------------------------------------------------------
    def declared_samples(self, device_id: int) -> int | None:
        node = self.nodes.get(device_id)
        return self.roster.declared.get(node) if node is not None else None

    def slowdown(self, device_id: int) -> float:
        return 1.0  # real devices take the time they take

    def secure_sum(self) -> SecureSum | None:
        return self._secure_sum

    def collect(
        self, instructions: dict[int, TrainInstructions], checkpoint: Callable[[int], None], receive: Receive
    ) -> int:
        self._secure_sum = None
        if any(instruction.secure is not None for instruction in instructions.values()):
            return self._collect_secure(instructions, receive)
        messages, partition_of, bytes_down = self._train_messages(instructions)
        answered: set[int] = set()
        for reply in self.grid.send_and_receive(messages, timeout=self.settings.round_timeout):
            partition = partition_of.get(reply.metadata.src_node_id)
            if partition is None or partition in answered:
                continue  # not asked, or already answered: never counted twice
            answered.add(partition)
            receive(partition, self._outcome(partition, reply))
        for partition in sorted(set(instructions) - answered):
            reason = f"no reply (the node left, or round-timeout {self.settings.round_timeout:g} s passed)"
            receive(partition, DeviceProblem(partition, "failed", reason))
        return bytes_down

    def _train_messages(self, instructions: dict[int, TrainInstructions]) -> tuple[list[Message], dict[int, int], int]:
        """Each partition's train message, node id -> partition, and the bytes they carry down."""
        messages, partition_of, bytes_down = [], {}, 0
        packed: dict[int, ConfigRecord] = {}  # the global model, packed once: one part for every device
        for partition, instruction in instructions.items():
            if id(instruction.weights) not in packed:
                packed[id(instruction.weights)] = records.to_arrays(instruction.weights)
            content = records.instructions_content(instruction, packed[id(instruction.weights)])
            bytes_down += records.carried_bytes(content)  # the packed model (SCAFFOLD: and c)
            node = self.nodes[partition]
            partition_of[node] = partition
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN,
                                    group_id=str(instruction.server_round)))
        return messages, partition_of, bytes_down

    # -- asynchronous delivery (FedBuff: engine.async_rounds on the wall clock) ------------------
    asynchronous = True  # start() and arrivals(): replies are handed over as they come, not per round

    def start(self, instructions: dict[int, TrainInstructions]) -> int:
        """Push the train messages without waiting for their replies (:meth:`arrivals` collects them)."""
        messages, partition_of, bytes_down = self._train_messages(instructions)
        pushed = self.clock()
        for message_id, message in zip(self.grid.push_messages(messages), messages):
            self._in_flight[message_id] = (partition_of[message.metadata.dst_node_id], pushed)
        return bytes_down

    def forget(self, partitions: set[int]) -> None:
        """Stop waiting for the replies to these partitions' started messages (their devices were switched off):
        a reply that still comes is never handed over, so it cannot pass for the answer to a later start."""
        self._in_flight = {i: sent for i, sent in self._in_flight.items() if sent[0] not in partitions}

    def arrivals(self, wait: float, checkpoint: Callable[[int], None]) -> list[tuple[int, Reply]]:
        """The replies to :meth:`start`'s messages that arrive within ``wait`` seconds (as soon as there is
        one), in arrival order; a message unanswered for ``round-timeout`` seconds comes back as a problem.
        ``checkpoint`` is called between pulls (it raises to stop the wait)."""
        deadline = self.clock() + wait
        while True:
            checkpoint(0)
            arrived: list[tuple[int, Reply]] = []
            if self._in_flight:
                for reply in self.grid.pull_messages(list(self._in_flight)):
                    sent = self._in_flight.pop(reply.metadata.reply_to_message_id, None)
                    if sent is not None:  # not asked, or already answered: never counted twice
                        arrived.append((sent[0], self._outcome(sent[0], reply)))
            now = self.clock()
            for message_id, (partition, pushed) in list(self._in_flight.items()):
                if now - pushed > self.settings.round_timeout:
                    del self._in_flight[message_id]
                    reason = f"no reply within round-timeout {self.settings.round_timeout:g} s (the node left?)"
                    arrived.append((partition, DeviceProblem(partition, "failed", reason)))
            if arrived or not self._in_flight or now >= deadline:
                return arrived
            self.sleep(min(getattr(self.grid, "interval", WAIT_POLL_SECONDS), max(deadline - now, 0.0)))

    def _collect_secure(self, instructions: dict[int, TrainInstructions], receive: Receive) -> int:
        """One round of Flower's SecAgg+: the devices' metrics to the loop, and only the sum of their updates."""
        partition_of = {self.nodes[partition]: partition for partition in instructions}
        fitins = {node: secagg.fit_ins(instructions[p], instructions[p].secure.weight)  # type: ignore[union-attr]
                  for node, p in partition_of.items()}
        server_round = next(iter(instructions.values())).server_round
        outcome = secagg.secure_round(self.grid, fitins, server_round, self.settings.round_timeout)
        for node, partition in partition_of.items():
            if node not in outcome.metrics:
                reason = ("it did not complete Flower's SecAgg+ round (no reply, an error, or round-timeout "
                          f"{self.settings.round_timeout:g} s passed)")
                receive(partition, DeviceProblem(partition, "failed", reason))
                continue
            try:
                update, extras = records.metered_update(outcome.metrics[node], partition,
                                                        masked=outcome.masked.get(node))
            except (KeyError, TypeError, ValueError) as error:
                reason = f"malformed metrics: {type(error).__name__}: {error}; its masked update is in the sum"
                receive(partition, DeviceProblem(partition, "rejected", reason[:300]))
                continue
            self.extras[partition] = {**extras, "steps": update.metrics.steps}
            receive(partition, update)
        summed = tuple(sorted(partition_of[node] for node in outcome.metrics))
        halted = "" if outcome.mean_delta is not None else "Flower's SecAgg+ halted: too few devices completed it"
        self._secure_sum = SecureSum(outcome.mean_delta, summed, halted)
        return sum(len(tensor) for ins in fitins.values() for tensor in ins.parameters.tensors)

    def _outcome(self, partition: int, reply: Message) -> Reply:
        if reply.has_error():
            return DeviceProblem(partition, "failed", f"the ClientApp failed: {reply.error.reason}"[:300])
        read = records.update_from(reply.content, partition)
        if isinstance(read, str):
            return DeviceProblem(partition, "rejected", read)
        update, extras = read
        self.extras[partition] = {**extras, "steps": update.metrics.steps}  # checked with the update in the loop
        return update

    # -- between rounds ------------------------------------------------------------------
    def active_partitions(self, min_devices: int) -> tuple[list[int], frozenset[int]]:
        """Connected, not deactivated partitions; waits until there are ``min_devices``."""
        deadline = self.clock() + self.settings.wait_timeout
        last_count = None
        while True:
            self.nodes = self.roster.refresh(self.grid)
            deactivated = self.settings.deactivated_now()
            active = sorted(p for p in self.nodes if p not in deactivated)
            if len(active) >= min_devices:
                return active, deactivated
            if self.clock() >= deadline:
                raise NotEnoughDevices(
                    f"only {len(active)} active device(s) after waiting {self.settings.wait_timeout:g} s; "
                    f"min-devices is {min_devices}"
                )
            if len(active) != last_count:
                last_count = len(active)
                log(INFO, "Waiting for devices: %d active (%d connected, %d deactivated), at least %d needed.",
                    len(active), len(self.nodes), len(deactivated & set(self.nodes)), min_devices)
            self.sleep(WAIT_POLL_SECONDS)
