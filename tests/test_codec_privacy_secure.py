"""The math of compression, differential privacy and secure aggregation, tested directly."""

from __future__ import annotations

import numpy as np
import pytest

from devices.codec import decode_delta, encode_delta, pack_nibbles, top_k, unpack_nibbles
from devices.privacy import add_gaussian_noise, clip_by_global_norm, global_norm
from devices.secure_aggregation import (
    SecureAggregationPlan,
    flatten,
    mask_sum,
    mask_update,
    to_fixed_point,
    unmask_total,
)
from engine.privacy import epsilon_after


@pytest.fixture
def delta():
    rng = np.random.default_rng(0)
    return [rng.normal(0, 0.01, size=(200, 50)).astype(np.float32), rng.normal(0, 0.01, size=50).astype(np.float32)]


def test_uncompressed_round_trip_is_exact_and_sized_honestly(delta):
    payload, sent = encode_delta(delta, "none")
    decoded = decode_delta(payload)
    assert all(np.array_equal(a, b) for a, b in zip(decoded, delta))
    raw = sum(d.nbytes for d in delta)
    assert raw < len(payload) < raw + 2048  # real serialised bytes: data plus container headers


@pytest.mark.parametrize("method, bits, ratio", [("q8", 8, 3.5), ("q4", 4, 6.5)])
def test_quantisation_error_is_within_half_a_step_and_shrinks_the_payload(delta, method, bits, ratio):
    payload, sent = encode_delta(delta, method)
    decoded = decode_delta(payload)
    for original, restored, same in zip(delta, decoded, sent):
        step = (original.max() - original.min()) / (2**bits - 1)
        assert np.abs(original - restored).max() <= step / 2 + 1e-7
        np.testing.assert_array_equal(restored, same)  # the device knows exactly what the server decodes
    assert len(encode_delta(delta, "none")[0]) / len(payload) > ratio


def test_nibble_packing_round_trips_odd_lengths():
    codes = np.array([0, 15, 7, 3, 9], np.uint8)
    np.testing.assert_array_equal(unpack_nibbles(pack_nibbles(codes), 5), codes)


def test_top_k_keeps_the_largest_entries_and_error_feedback_loses_nothing(delta):
    indices, values = top_k(np.array([0.1, -5.0, 0.2, 3.0, -0.05]), 0.4)
    assert sorted(indices.tolist()) == [1, 3] and sorted(values.tolist()) == [-5.0, 3.0]
    payload, sent = encode_delta(delta, "topk", topk_fraction=0.01)
    assert len(encode_delta(delta, "none")[0]) / len(payload) > 20
    # error feedback: what was not sent is carried over, so sent + residual == everything so far
    residual = [np.zeros_like(d) for d in delta]
    total_sent = [np.zeros_like(d) for d in delta]
    for _ in range(5):
        carried = [d + r for d, r in zip(delta, residual)]
        _, sent = encode_delta(carried, "topk", 0.05)
        residual = [c - s for c, s in zip(carried, sent)]
        total_sent = [t + s for t, s in zip(total_sent, sent)]
    for t, r, d in zip(total_sent, residual, delta):
        np.testing.assert_allclose(t + r, 5 * d, atol=1e-5)


def test_nan_survives_quantisation_so_the_server_can_reject_it():
    bad = [np.array([1.0, np.nan, 2.0], np.float32)]
    for method in ("q8", "q4", "topk"):
        assert not np.all(np.isfinite(decode_delta(encode_delta(bad, method, 0.5)[0])[0]))


def test_clipping_bounds_the_global_norm_and_leaves_small_updates_alone(delta):
    norm = global_norm(delta)
    clipped = clip_by_global_norm(delta, norm / 4)
    assert global_norm(clipped) == pytest.approx(norm / 4, rel=1e-5)
    np.testing.assert_allclose(clipped[0] * 4, delta[0], rtol=1e-5)
    unchanged = clip_by_global_norm(delta, norm * 2)
    assert all(np.array_equal(a, b) for a, b in zip(unchanged, delta))


def test_gaussian_noise_has_the_requested_stddev():
    noisy = add_gaussian_noise([np.zeros(200_000, np.float32)], 0.5, np.random.default_rng(1))[0]
    assert noisy.std() == pytest.approx(0.5, rel=0.01) and abs(noisy.mean()) < 0.01


def test_epsilon_grows_with_rounds_and_shrinks_with_noise_and_sampling():
    base = epsilon_after(1.0, 0.1, 10, 1e-5)
    assert 0 < base < float("inf")
    assert epsilon_after(1.0, 0.1, 50, 1e-5) > base
    assert epsilon_after(2.0, 0.1, 10, 1e-5) < base
    assert epsilon_after(1.0, 1.0, 10, 1e-5) > base  # no privacy amplification by sampling


def _device_deltas(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [[rng.normal(0, 0.05, size=(30, 20)).astype(np.float32), rng.normal(0, 0.05, size=20).astype(np.float32)]
            for _ in range(count)]


def test_masks_cancel_so_the_sum_equals_the_plain_weighted_sum():
    deltas = _device_deltas(5)
    weights = [0.1, 0.3, 0.2, 0.25, 0.15]
    peers = tuple(range(5))
    masked = [mask_update(i, d, SecureAggregationPlan(peers, secret=42, weight=w))
              for i, (d, w) in enumerate(zip(deltas, weights))]
    total = unmask_total(masked, [])
    plain = sum(w * flatten(d) for d, w in zip(deltas, weights))
    np.testing.assert_allclose(total, plain, atol=1e-6)


def test_the_server_sees_only_masked_individual_updates():
    deltas = _device_deltas(3)
    plan = SecureAggregationPlan((0, 1, 2), secret=7, weight=1 / 3)
    masked = mask_update(0, deltas[0], plan)
    plain = to_fixed_point(flatten(deltas[0]) / 3)
    assert np.mean(masked == plain) < 0.001  # essentially every coordinate is hidden
    # a masked vector looks like uniform 64-bit noise: no correlation with the real update
    as_real = masked.view(np.int64).astype(np.float64)
    assert abs(np.corrcoef(as_real, flatten(deltas[0]))[0, 1]) < 0.2
    assert np.abs(as_real).mean() > 1e15  # far outside the range of any real update


def test_masks_of_a_device_that_dropped_out_are_removed():
    deltas = _device_deltas(4)
    peers = (0, 1, 2, 3)
    masked = {i: mask_update(i, d, SecureAggregationPlan(peers, 3, 0.25)) for i, d in enumerate(deltas)}
    survivors, missing = (0, 1, 3), (2,)
    corrections = [mask_sum(i, missing, 3, masked[0].size) for i in survivors]
    total = unmask_total([masked[i] for i in survivors], corrections)
    np.testing.assert_allclose(total, sum(0.25 * flatten(deltas[i]) for i in survivors), atol=1e-6)
    wrong = unmask_total([masked[i] for i in survivors], [])
    assert not np.allclose(wrong, total)
