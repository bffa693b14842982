"""The Flower wire format: a list of arrays packed as one ``bytes`` value (fewer message parts, fewer requests).

Pure and fast: exact round trips, the part counts Flower's own functions give a
CNN's train message and its reply, and packed payloads built by hand to lie about
their length, dtypes and names, each refused with a one-line reason; a
control-variate change that unpacks but holds NaN, ints or wrong shapes is
still refused per layer by the round loop's check.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from devices.codec import encode_delta
from devices.messages import ControlVariate, DeviceMetrics, EncodedUpdate, TrainInstructions
from engine.transport_checks import control_delta_problem
from flower_app import records, secagg, wire

FLOAT = np.arange(6, dtype=np.float32).tobytes()  # 24 bytes: six float32
CNN_SHAPES = [(3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,), (1600, 128), (128,), (128, 10), (10,)]  # engine.models


def cnn_weights(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for shape in CNN_SHAPES]


def metrics() -> DeviceMetrics:
    return DeviceMetrics(0.5, 0.8, 1.0, 0.6, 0.6, 0.75, 3, 0.1)


def handmade(header: object, data: bytes) -> bytes:
    """A packed payload with any header: what a hostile sender can put on the wire."""
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(4, "little") + encoded + data


def test_packing_gives_back_exactly_what_was_packed():
    arrays = [
        *cnn_weights(),
        np.array([np.nan, -0.0, np.inf, 1e-45], np.float32),  # NaN, signed zero, inf, subnormal: bit for bit
        np.arange(6, dtype=np.float64).reshape(2, 3).T,  # not contiguous
        np.array(7, np.int64),  # 0-d
        np.zeros((0, 4), np.float32),  # empty
        np.array([True, False]),
        np.arange(5, dtype=np.uint8),
    ]
    back = wire.from_record(wire.to_record(arrays))
    assert len(back) == len(arrays)
    for got, sent in zip(back, arrays):
        assert got.dtype == sent.dtype and got.shape == sent.shape
        assert got.tobytes() == np.ascontiguousarray(sent).tobytes()
        assert got.flags.writeable  # as Array.numpy() gives: a device may train on it in place
    assert wire.unpack(wire.pack([])) == []
    by_hand = wire.unpack(handmade([["0", "<f4", [2, 2]], ["1", "<f4", [2]]], FLOAT))  # what the hostile cases spoil
    assert [a.tolist() for a in by_hand] == [[[0, 1], [2, 3]], [4, 5]]


def test_a_cnn_message_is_four_parts_and_its_reply_three(server_identity):
    model = cnn_weights()
    packed = records.to_arrays(model)  # a round's global model, packed once for every device
    trains = [Message(records.instructions_content(TrainInstructions(1, model, 1, 32, 0.01, seed), packed),
                      dst_node_id=5, message_type=MessageType.TRAIN) for seed in (7, 8)]
    # Message, RecordDict, the model's ConfigRecord, the config's ConfigRecord (was 20: 2 per layer + 4; then 6)
    parts = [get_all_nested_objects(train) for train in trains]
    assert [len(p) for p in parts] == [4, 4]
    assert len(set(parts[0]) | set(parts[1])) == 7  # two devices: the model is the same part (pushed once)
    payload, _ = encode_delta([np.zeros_like(w) for w in model], "q8")
    reply = Message(records.update_content(EncodedUpdate(1, 10, metrics(), payload=payload)), reply_to=trains[0])
    assert len(get_all_nested_objects(reply)) == 3  # Message, RecordDict, one ConfigRecord (payload and metrics)
    scaffold = TrainInstructions(2, model, 1, 32, 0.01, 7, control=ControlVariate(cnn_weights(1), 0.9))
    message = Message(records.instructions_content(scaffold), dst_node_id=5, message_type=MessageType.TRAIN)
    assert len(get_all_nested_objects(message)) == 5  # c: one more packed ConfigRecord
    back = records.instructions_from(message.content)
    assert all(np.array_equal(a, b) for a, b in zip(back.weights, model))
    assert all(np.array_equal(a, b) for a, b in zip(back.control.weights, cnn_weights(1)))


def test_the_secure_fitins_carry_the_packed_model():
    model = cnn_weights()
    fitins = secagg.fit_ins(TrainInstructions(3, model, 2, 16, 0.05, 9, compression="q4"), 0.25)
    assert len(fitins.parameters.tensors) == 1
    from flwr.compat.common import recorddict_compat as compat

    instructions, weight = secagg.secure_instructions(compat.fitins_to_recorddict(fitins, keep_input=True))
    assert weight == 0.25 and instructions.compression == "q4" and instructions.server_round == 3
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(instructions.weights, model))


@pytest.mark.parametrize("payload, reason", [
    (handmade([["0", "<f4", [6]]], FLOAT[:-1]), "describe 24 bytes of data, 23 were received"),
    (handmade([["0", "<f4", [6]]], FLOAT + b"\0"), "describe 24 bytes of data, 25 were received"),
    (handmade([["0", "<U6", [1]]], FLOAT), "must hold numbers, got dtype <U6"),
    (handmade([["0", "|S24", [1]]], FLOAT), "must hold numbers, got dtype |S24"),
    (handmade([["0", "|O", [3]]], FLOAT), "must hold numbers, got dtype |O"),
    (handmade([["0", "<M8[D]", [3]]], FLOAT), "must hold numbers, got dtype <M8[D]"),
    (handmade([["0", [["a", "<f4"], ["b", "<f4"]], [3]]], FLOAT), "must be described as"),
    (handmade([["0", "<f4,<f4", [3]]], FLOAT), "must hold numbers"),  # a structured dtype in a string
    (handmade([["0", "(2,)<f4", [3]]], FLOAT), "must hold numbers"),  # a sub-array dtype
    (handmade([["0", "no such dtype", [6]]], FLOAT), "unknown dtype"),
    (handmade([["1", "<f4", [6]]], FLOAT), "must be described as ['0', dtype, shape]"),
    (handmade([["0", "<f4", [-6]]], FLOAT), "invalid shape"),
    (handmade([["0", "<f4", [True, 6]]], FLOAT), "invalid shape"),
    (handmade([["0", "<f4", [0, 2**62]]], b""), "invalid shape"),
    (handmade({"0": "<f4"}, FLOAT), "must list at most"),
    (b"\xff\xff\x00\x00[]", "claims 65535 bytes, only 2 follow"),
    (b"\x07\x00\x00\x00not json" + bytes(64), "not JSON"),
    (b"\x01\x00", "at least 4 bytes"),
])
def test_hostile_packed_payloads_are_refused_with_a_reason(payload, reason):
    with pytest.raises(ValueError) as refused:
        wire.unpack(payload)
    assert reason in str(refused.value) and "\n" not in str(refused.value)


def test_a_record_that_is_not_one_packed_value_is_refused():
    with pytest.raises(ValueError, match="expected one 'packed' value, got 2"):
        wire.from_record(ConfigRecord({wire.PACKED: wire.pack([]), "more": b""}))
    with pytest.raises(ValueError, match="packed must be bytes, got str"):
        wire.from_record(ConfigRecord({wire.PACKED: "not bytes"}))
    with pytest.raises(ValueError, match="packed must be bytes, got list"):
        wire.from_record(ConfigRecord({wire.PACKED: [b"a", b"b"]}))


def test_a_packed_control_change_is_still_checked_layer_by_layer():
    model = [np.zeros(shape, np.float32) for shape in CNN_SHAPES[:2]]

    def reply(delta) -> EncodedUpdate | str:
        content = records.update_content(EncodedUpdate(1, 10, metrics(), payload=b"x", control_delta=delta))
        read = records.update_from(content, device_id=1)
        return read if isinstance(read, str) else read[0]

    good = reply([np.full(w.shape, 0.5, np.float32) for w in model])
    assert control_delta_problem(good.control_delta, model) is None
    nan = reply([np.full(CNN_SHAPES[0], math.nan, np.float32), model[1]])
    assert "NaN" in control_delta_problem(nan.control_delta, model)
    huge = reply([np.full(CNN_SHAPES[0], 1e300), model[1]])  # float64: finite here, inf as float32
    assert "NaN or Inf" in control_delta_problem(huge.control_delta, model)
    ints = reply([np.zeros(CNN_SHAPES[0], np.int32), model[1]])
    assert "must hold floating point, got dtype <i4" in control_delta_problem(ints.control_delta, model)
    short = reply([model[1]])
    assert "1 arrays, the model has 2" in control_delta_problem(short.control_delta, model)
    shape = reply([np.zeros((3, 3), np.float32), model[1]])
    assert "has shape (3, 3), expected (3, 3, 1, 32)" in control_delta_problem(shape.control_delta, model)

    content = records.update_content(EncodedUpdate(1, 10, metrics(), payload=b"x", control_delta=model))
    content.config_records[records.UPDATE][records.CONTROL_DELTA] = handmade([["0", "<f4", [6]]], FLOAT[:-1])
    refused = records.update_from(content, device_id=1)  # a reason for the round loop, never an exception
    assert isinstance(refused, str) and refused.startswith("malformed reply: ValueError: packed arrays describe")
