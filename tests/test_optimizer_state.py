"""Devices that keep their local optimizer state between rounds, alone and in stacks."""

from __future__ import annotations

import numpy as np
import pytest

from devices.optimizer_state import bias_correction, device_states, stack_states
from engine.config import KEPT_STATE_MAX_DEVICES, FederationConfig

BETAS = (0.9, 0.999)


def adam_state(steps: int, m: float, v: float, shape=(2,)) -> list[np.ndarray]:
    return [np.asarray(steps, np.int64), np.full(shape, m, np.float32), np.full(shape, v, np.float32)]


def test_stacked_states_keep_each_devices_bias_corrected_moments_at_the_shared_step_count():
    states = [adam_state(10, 0.5, 0.2), adam_state(4, 0.3, 0.1)]
    stacked = stack_states(states, adam_state(0, 0.0, 0.0), BETAS)
    assert int(stacked[0]) == 4
    for d, state in enumerate(states):
        for slot, beta in zip((1, 2), BETAS):
            corrected = stacked[slot][d] / bias_correction(beta, 4)
            assert corrected == pytest.approx(state[slot] / bias_correction(beta, int(state[0])), rel=1e-6)
    assert [int(s[0]) for s in device_states(stacked, 2)] == [4, 4]
    assert np.array_equal(device_states(stacked, 2)[1][1], stacked[1][1])


def test_a_device_without_a_state_starts_the_whole_stack_fresh():
    fresh = adam_state(0, 0.0, 0.0)
    for states in ([adam_state(10, 0.5, 0.2), None], [adam_state(10, 0.5, 0.2), adam_state(3, 1.0, 1.0, (3,))]):
        stacked = stack_states(states, fresh, BETAS)
        assert int(stacked[0]) == 0 and not np.any(stacked[1]) and stacked[1].shape == (2, 2)


def test_sgd_momentum_is_stacked_unscaled():
    states = [[np.asarray(7), np.ones(3, np.float32)], [np.asarray(5), np.full(3, 2.0, np.float32)]]
    stacked = stack_states(states, [np.asarray(0), np.zeros(3, np.float32)], [None])
    assert int(stacked[0]) == 5 and np.array_equal(stacked[1], [[1, 1, 1], [2, 2, 2]])


def test_fresh_by_default_auto_keeps_the_state_for_small_federations_unless_the_strategy_assumes_a_fresh_optimizer():
    assert not FederationConfig().keeps_optimizer_state  # fresh by default
    assert FederationConfig(optimizer_state="auto").keeps_optimizer_state
    assert not FederationConfig(num_devices=KEPT_STATE_MAX_DEVICES + 1, optimizer_state="auto").keeps_optimizer_state
    assert FederationConfig(num_devices=KEPT_STATE_MAX_DEVICES + 1, optimizer_state="kept").keeps_optimizer_state
    assert not FederationConfig(optimizer_state="fresh").keeps_optimizer_state
    assert not FederationConfig(strategy="scaffold", optimizer="sgd", optimizer_state="auto").keeps_optimizer_state
    assert not FederationConfig(strategy="fednova", optimizer_state="auto").keeps_optimizer_state


def finished(federation):
    federation.start()
    snapshot = federation.wait(timeout=900)
    assert snapshot.status.value == "finished", snapshot.message
    return federation


def flat(weights) -> np.ndarray:
    return np.concatenate([np.ravel(w) for w in weights])


def test_kept_states_train_stacked_exactly_as_one_by_one_and_differ_from_fresh_ones(make_federation):
    # IID devices of equal size run equal step counts, so a stack's shared step count is each device's own
    settings = dict(num_devices=4, train_samples=400, test_samples=200, rounds=2, precision="float32",
                    optimizer_state="kept")
    one_by_one = make_federation(stack_width=1, **settings)
    initial = flat(one_by_one.global_weights)
    want = flat(finished(one_by_one).global_weights)
    got = flat(finished(make_federation(stack_width=4, **settings)).global_weights)
    fresh = flat(finished(make_federation(stack_width=4, **{**settings, "optimizer_state": "fresh"})).global_weights)
    assert np.linalg.norm(got - want) < 1e-3 * np.linalg.norm(want - initial)
    assert np.linalg.norm(fresh - want) > 0.05 * np.linalg.norm(want - initial)  # round 2 began from the kept state
