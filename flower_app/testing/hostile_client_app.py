"""A ClientApp that misbehaves on purpose, for tests against real Flower processes only.

The run-config key ``hostile`` names what each partition does wrong, one case
per round in turn, e.g. ``"2:strings+huge,5:no-node-record"``; every other
partition is the real :mod:`flower_app.client_app`. Train cases build their
reply from the received weights' shapes without TensorFlow, so hostile nodes
cost little. Two cases behave: ``honest`` sends a valid zero update (a cheap
well-behaved device) and ``slow`` does the same after ``SLOW_SECONDS`` (a
device to kill mid-round). Nothing here is imported by the product.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from devices.codec import encode_delta, serialize
from flower_app import client_app, records
from flower_app.config import node_spec

HOSTILE_KEY = "hostile"
QUERY_CASES = ("no-node-record", "bad-partition-id")
TRAIN_CASES = ("strings", "bytes", "structured", "datetime", "huge", "shape", "negative-examples",
               "too-many-examples", "nan-seconds", "no-metrics", "payload-strings", "garbage")
WELL_BEHAVED_CASES = ("honest", "slow")
SLOW_SECONDS = 150.0  # longer than a SuperNode takes to start on a busy machine: the test kills it first

app = ClientApp()


def cases_of(run_config, partition_id: int) -> list[str]:
    """The cases ``partition_id`` plays, from ``hostile = "2:strings+huge,5:no-node-record"``."""
    for item in str(run_config.get(HOSTILE_KEY, "")).split(","):
        partition, _, cases = item.partition(":")
        if partition.strip().isdigit() and int(partition) == partition_id:
            return [case for case in cases.split("+") if case]
    return []


def _payload(shapes: list[tuple[int, ...]], values, header_shapes=None) -> bytes:
    arrays = {"method": np.array([0], np.uint8)}
    for index, shape in enumerate(shapes):
        arrays[f"values{index}"] = values(shape)
    header = header_shapes or shapes
    arrays["shapes"] = np.array([len(header)] + [d for s in header for d in (len(s), *s)], np.int64)
    return serialize(arrays)


def hostile_reply(case: str, msg: Message, num_examples: int) -> RecordDict:
    """The reply content for one train case (an honest zero update, spoiled as ``case`` says)."""
    weights = records.to_weights(msg.content.config_records[records.ARRAYS])
    shapes = [w.shape for w in weights]
    payload = encode_delta([np.zeros_like(w) for w in weights], "none")[0]
    metrics = {"num-examples": num_examples, "partition-id": 0, "train-loss": 1.0, "train-accuracy": 0.5,
               "received-loss": 1.0, "received-accuracy": 0.5, "local-loss": 1.0, "local-accuracy": 0.5,
               "steps": 1, "seconds": 0.1}
    makers = {
        "strings": lambda s: np.full(s, "0.0"),
        "bytes": lambda s: np.full(s, b"0.0"),
        "structured": lambda s: np.zeros(s, [("a", "<f4"), ("b", "<f4")]),
        "datetime": lambda s: np.full(s, np.datetime64("2026-01-01")),
        "huge": lambda s: np.full(s, 1e300, np.float64),  # finite here, inf as float32
    }
    if case in makers:
        payload = _payload(shapes, makers[case])
    elif case == "shape":
        payload = _payload([(2,)] * len(shapes), lambda s: np.zeros(s, np.float32), [(2,)] * len(shapes))
    elif case == "negative-examples":
        metrics["num-examples"] = -5
    elif case == "too-many-examples":
        metrics["num-examples"] = 10**15
    elif case == "nan-seconds":
        metrics["seconds"] = float("nan")
    elif case == "garbage":
        payload = b"\x07\x00\x00\x00not json" + bytes(range(64))
    sent: object = ["not", "bytes"] if case == "payload-strings" else payload
    if case == "no-metrics":
        return RecordDict({records.UPDATE: ConfigRecord({records.PAYLOAD: sent})})
    return RecordDict({records.UPDATE: ConfigRecord({records.PAYLOAD: sent, **metrics})})


@app.query()
def query(msg: Message, context: Context) -> Message:
    spec = node_spec(context.node_config, context.run_config, context.node_id)
    cases = cases_of(context.run_config, spec.partition_id)
    if "no-node-record" in cases:
        return Message(RecordDict(), reply_to=msg)
    reply = client_app.query(msg, context)
    if "bad-partition-id" in cases:
        reply.content.config_records[records.NODE][records.PARTITION_ID] = "abc"
    return reply


@app.train()
def train(msg: Message, context: Context) -> Message:
    spec = node_spec(context.node_config, context.run_config, context.node_id)
    cases = [c for c in cases_of(context.run_config, spec.partition_id) if c not in QUERY_CASES]
    if not cases:
        return client_app.train(msg, context)
    server_round = int(msg.content.config_records[records.CONFIG]["server-round"])
    case = cases[(server_round - 1) % len(cases)]
    if case == "slow":
        time.sleep(SLOW_SECONDS)
    return Message(hostile_reply(case, msg, client_app.declared_samples(spec)), reply_to=msg)
