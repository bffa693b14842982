"""Flower's SecAgg+ under the engine's round loop, in memory: Flower's real workflow and mod, exact sums.

:class:`MemoryGrid` carries each message to its node the way a SuperLink
does (a copy of the content, the node's own ``Context`` kept between
messages, an exception becomes an error reply) and runs the node's side as
the ClientApp does: ``flower_app.secagg.secure_mod`` (Flower's
``secaggplus_mod``) around a train handler that replies with a fixed delta.
No TensorFlow; the processes are covered by ``tests/test_flower_secagg.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from flwr.app import Context, Error, Message, MessageType, RecordDict

from devices.codec import encode_delta
from devices.messages import DeviceMetrics, EncodedUpdate
from engine.rounds import RoundRunner
from engine.strategies import build_strategy
from flower_app import records, secagg
from flower_app.config import server_settings
from flower_app.transport import GridTransport, Roster
from tests.flower_testing import StubGrid

SHAPES = [(40, 3), (3,)]
SAMPLES = {0: 100, 1: 300, 2: 600}  # partition -> declared training samples
NODES = {201: 0, 202: 1, 203: 2}  # node id -> partition


def delta_of(partition: int) -> list[np.ndarray]:
    rng = np.random.default_rng(partition)
    return [rng.normal(0, 0.1, shape).astype(np.float32) for shape in SHAPES]


def metrics() -> DeviceMetrics:
    return DeviceMetrics(train_loss=0.5, train_accuracy=0.8, received_loss=1.0, received_accuracy=0.6,
                         local_loss=0.6, local_accuracy=0.75, steps=3, seconds=0.1)


class MemoryGrid(StubGrid):
    """Three nodes answering queries and SecAgg+ train messages in this process."""

    def __init__(self, failing: int | None = None):
        self.contexts = {node: Context(0, node, {}, RecordDict(), {}) for node in NODES}
        self.failing = failing  # a partition whose training raises (an error reply, as Flower sends)
        self.trained: dict[int, object] = {}  # partition -> the instructions its node received

    def get_node_ids(self):
        return list(NODES)

    def train(self, message: Message, context: Context) -> Message:
        partition = NODES[message.metadata.dst_node_id]
        if partition == self.failing:
            raise RuntimeError("out of memory")
        instructions, weight = secagg.secure_instructions(message.content)
        self.trained[partition] = instructions
        payload, _ = encode_delta(delta_of(partition), instructions.compression)
        update = EncodedUpdate(partition, SAMPLES[partition], metrics(), payload=payload)
        return Message(secagg.secure_reply(update, weight), reply_to=message)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            delivered = Message(copy.deepcopy(message.content), dst_node_id=node,
                                message_type=message.metadata.message_type)
            if message.metadata.message_type == MessageType.QUERY:
                partition = NODES[node]
                replies.append(Message(records.node_content(partition, 3, "partition", SAMPLES[partition]),
                                       reply_to=delivered))
                continue
            try:
                replies.append(secagg.secure_mod(delivered, self.contexts[node], self.train))
            except Exception as error:  # what a SuperNode sends back when its ClientApp raises
                replies.append(Message(Error(code=1, reason=f"{type(error).__name__}: {error}"), reply_to=delivered))
        return replies


class Evaluator:
    def set_weights(self, weights): ...

    def evaluate(self, x, y):
        return 0.5, 0.8, np.zeros(len(y), np.int64)


def secure_round(grid: MemoryGrid, **run_config):
    from engine.setup import ServerTestSet

    settings = server_settings({"seed": 3, "min-devices": 3, "wait-timeout": 5.0, "secure-aggregation": True,
                                **run_config})
    transport = GridTransport(grid, settings, Roster())
    active, _ = transport.active_partitions(3)
    test_set = ServerTestSet(np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.int64), 2)
    runner = RoundRunner(settings.federation, transport, Evaluator(), build_strategy("fedavg"), test_set,
                         lambda *args: None)
    start = [np.full(shape, 0.5, np.float32) for shape in SHAPES]
    new_weights, result = runner.run(1, start, active, lambda steps: None)
    return start, new_weights, result


def expected_model(start, partitions):
    total = sum(SAMPLES[p] for p in partitions)
    return [w + sum(SAMPLES[p] / total * delta_of(p)[i] for p in partitions) for i, w in enumerate(start)]


def test_secagg_plus_reveals_the_weighted_mean_of_the_deltas_exactly(server_identity):
    grid = MemoryGrid()
    start, new_weights, result = secure_round(grid)
    for got, want in zip(new_weights, expected_model(start, [0, 1, 2])):
        assert got.dtype == np.float32 and np.allclose(got, want, atol=2e-5), np.abs(got - want).max()
    assert [d.device_id for d in result.devices] == [0, 1, 2] and result.problems == ()
    assert [d.samples for d in result.devices] == [100, 300, 600]  # metrics travel, updates do not
    assert all(d.bytes_up > 0 for d in result.devices)  # the masked vector each one sent
    assert {p: i.seed for p, i in grid.trained.items()} == {p: grid.trained[p].seed for p in (0, 1, 2)}
    assert len({i.seed for i in grid.trained.values()}) == 3  # each device's own instructions


def test_a_device_failing_mid_protocol_is_unmasked_from_the_others_shares(server_identity):
    grid = MemoryGrid(failing=1)
    start, new_weights, result = secure_round(grid)
    for got, want in zip(new_weights, expected_model(start, [0, 2])):
        assert np.allclose(got, want, atol=2e-5), np.abs(got - want).max()
    assert [d.device_id for d in result.devices] == [0, 2]
    assert [(p.device_id, p.kind) for p in result.problems] == [(1, "failed")]
    assert "SecAgg+" in result.problems[0].reason


def test_clipping_and_central_noise_compose_with_the_secure_sum(server_identity):
    grid = MemoryGrid()
    start, plain, _ = secure_round(MemoryGrid())
    _, noisy, result = secure_round(grid, **{"clip-norm": 10.0, "noise-multiplier": 1.0})
    assert grid.trained[0].privacy.clip_norm == 10.0  # devices clip before their delta is masked
    assert result.problems == () and all(np.isfinite(w).all() for w in noisy)
    assert not all(np.allclose(a, b) for a, b in zip(plain, noisy))  # the server's noise went on the mean
