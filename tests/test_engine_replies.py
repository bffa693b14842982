"""What a device sends back is checked before use: every bad reply becomes a reason, never an exception."""

from __future__ import annotations

import numpy as np
import pytest

from devices.codec import encode_delta, serialize
from devices.messages import DeviceMetrics, EncodedUpdate
from engine.transport_checks import decode_update, masked_problem, metrics_problem, reply_problem, samples_problem

MODEL = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]
SHAPES = np.array([2, 2, 3, 2, 1, 2], np.int64)


def metrics(**changes) -> DeviceMetrics:
    values = dict(train_loss=0.5, train_accuracy=0.8, received_loss=1.0, received_accuracy=0.6,
                  local_loss=float("nan"), local_accuracy=float("nan"), steps=3, seconds=0.2)
    return DeviceMetrics(**{**values, **changes})


def update(payload: bytes, samples: int = 10) -> EncodedUpdate:
    return EncodedUpdate(0, samples, metrics(), payload=payload)


def payload_with(values0: np.ndarray, values1: np.ndarray | None = None, shapes: np.ndarray = SHAPES) -> bytes:
    return serialize({"method": np.array([0], np.uint8), "values0": values0,
                      "values1": np.zeros(2, np.float32) if values1 is None else values1, "shapes": shapes})


@pytest.mark.parametrize("compression", ["none", "q8", "q4", "topk"])
def test_honest_updates_decode_to_the_model_plus_the_delta(compression):
    delta = [np.full((3, 2), 0.25, np.float32), np.array([-0.5, 0.5], np.float32)]
    payload, sent = encode_delta(delta, compression, topk_fraction=0.5)
    model, problem = decode_update(update(payload), MODEL)
    assert problem is None
    assert all(np.allclose(m, s) and m.dtype == np.float32 for m, s in zip(model, sent))


@pytest.mark.parametrize("values0, expected", [
    (np.full((3, 2), "1.0"), "must hold floating point"),  # numeric strings would even cast
    (np.full((3, 2), b"1.0"), "must hold floating point"),
    (np.zeros((3, 2), [("a", "<f4"), ("b", "<f4")]), "must hold floating point"),
    (np.full((3, 2), np.datetime64("2026-01-01")), "must hold floating point"),
    (np.full((3, 2), 1e300, np.float64), "NaN or Inf"),  # finite in float64, inf once cast to float32
    (np.full((3, 2), np.nan, np.float32), "NaN or Inf"),
    (np.zeros((2, 2), np.float32), "cannot reshape"),
])
def test_bad_arrays_are_refused_with_a_reason(values0, expected):
    model, problem = decode_update(update(payload_with(values0)), MODEL)
    assert model is None and expected in problem


def test_wrong_shapes_garbage_and_huge_sizes_are_refused():
    assert "shapes" in decode_update(update(payload_with(np.zeros((3, 3), np.float32),
                                                         shapes=np.array([2, 2, 3, 3, 1, 2]))), MODEL)[1]
    assert "malformed" in decode_update(update(b"\x00\x01garbage"), MODEL)[1]
    assert "malformed" in decode_update(update(b""), MODEL)[1]
    huge = serialize({"method": np.array([3], np.uint8), "indices0": np.array([10**6], np.int32),
                      "values0": np.ones(1, np.float32), "indices1": np.array([0], np.int32),
                      "values1": np.ones(1, np.float32), "shapes": SHAPES})
    assert "outside" in decode_update(update(huge), MODEL)[1]


def test_sample_counts_and_metrics_are_bounded():
    assert samples_problem(10, 50) is None
    for bad in (-5, 0, 51, 10**15, 2.5, True, "7"):
        assert samples_problem(bad, 50) is not None, bad
    assert samples_problem(10**15, None) is not None  # bounded even without a declared size
    assert metrics_problem(metrics()) is None
    for change in ({"seconds": float("nan")}, {"seconds": float("inf")}, {"train_loss": float("inf")},
                   {"train_accuracy": 1.5}, {"steps": -1}, {"received_loss": "0.3"}, {"seconds": -2.0}):
        assert metrics_problem(metrics(**change)) is not None, change
    assert reply_problem(EncodedUpdate(0, -1, metrics()), 50).startswith("num-examples")
    assert masked_problem(np.zeros(8, np.uint64), 8) is None
    assert "unsigned 64-bit" in masked_problem(np.zeros(8, np.float64), 8)
