"""The federation on small real slices of Fashion-MNIST: learning, control, faults."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine.config import ConfigError, FederationConfig
from engine.federation import Federation
from engine.results import DeviceStatus, RunStatus
from engine.rounds import select_devices
from tests.conftest import wait_until


def test_cnn_federation_learns_on_a_small_real_slice(make_federation):
    federation = make_federation(model="cnn", rounds=2)
    federation.start()
    snapshot = federation.wait(timeout=300)  # a bound on a hang, not a speed check: 28 s at load 9-14, >120 s at 29
    assert snapshot.status is RunStatus.FINISHED, snapshot.message
    assert [r.round for r in snapshot.history] == [1, 2]
    last = snapshot.history[-1]
    assert last.global_accuracy > 0.5  # chance is 0.1
    assert snapshot.history[0].global_loss > last.global_loss
    assert [d.device_id for d in last.devices] == [0, 1, 2]
    assert sum(d.samples for d in last.devices) == sum(d.samples for d in snapshot.devices)
    assert all(0 <= d.accuracy <= 1 and d.accuracy > 0.3 for d in last.devices)
    weights_bytes = sum(w.nbytes for w in federation.global_weights)
    # serialised float32 weights: the raw bytes plus a small container overhead
    assert 3 * weights_bytes < last.bytes_down < 3 * weights_bytes * 1.01
    assert 3 * weights_bytes < last.bytes_up < 3 * weights_bytes * 1.01
    assert last.confusion.sum() == 1000
    assert np.trace(last.confusion) / 1000 == pytest.approx(last.global_accuracy)
    probabilities = federation.predict(federation.dataset.x_test[:5] / 255.0)
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_same_seed_gives_the_same_run(make_federation):
    accuracies = []
    for _ in range(2):
        federation = make_federation(rounds=1)
        federation.start()
        accuracies.append(federation.wait(timeout=60).history[0].global_accuracy)
    assert accuracies[0] == accuracies[1]


def test_pause_resume_and_stop(make_federation):
    federation = make_federation(rounds=None)
    federation.start()
    wait_until(lambda: federation.snapshot().round >= 1)
    federation.pause()
    assert federation.snapshot().status is RunStatus.PAUSED
    time.sleep(0.3)  # a round already past its last checkpoint may still land
    paused_round = federation.snapshot().round
    time.sleep(1.0)
    assert federation.snapshot().round == paused_round
    assert federation.snapshot().status is RunStatus.PAUSED
    federation.resume()
    wait_until(lambda: federation.snapshot().round >= paused_round + 2)
    federation.stop()
    snapshot = federation.snapshot()
    assert snapshot.status is RunStatus.STOPPED
    assert snapshot.round >= paused_round + 2
    time.sleep(0.5)
    assert federation.snapshot().round == snapshot.round  # nothing runs after stop
    federation.set_rounds(snapshot.round + 1)
    federation.start()  # continue from where it stopped
    assert federation.wait(timeout=60).round == snapshot.round + 1


def test_stop_abandons_the_round_in_progress_promptly(make_federation):
    # One big device, three local epochs of the CNN: a round takes many seconds.
    federation = make_federation(model="cnn", num_devices=1, train_samples=20_000, local_epochs=3, rounds=1)
    federation.start()
    wait_until(lambda: federation.snapshot().round_progress > 0)
    federation.stop(timeout=5)
    snapshot = federation.snapshot()
    assert snapshot.status is RunStatus.STOPPED
    assert snapshot.history == ()


def test_devices_can_be_deactivated_and_reactivated_mid_run(make_federation):
    federation = make_federation(num_devices=4, train_samples=2000, rounds=None)
    federation.start()
    wait_until(lambda: federation.snapshot().round >= 1)
    federation.set_active(2, False)
    assert federation.snapshot().devices[2].active is False
    wait_until(lambda: federation.snapshot().devices[2].status is DeviceStatus.INACTIVE)
    marker = federation.snapshot().round + 1  # the round after the current one certainly excludes it
    wait_until(lambda: federation.snapshot().round >= marker + 1)
    later = [r for r in federation.snapshot().history if r.round > marker]
    assert later and all(2 not in r.selected for r in later)
    federation.set_active(2, True)
    marker = federation.snapshot().round + 1
    wait_until(lambda: federation.snapshot().round >= marker + 1)
    assert 2 in federation.snapshot().history[-1].selected
    federation.stop()


def test_a_crashing_device_is_dropped_and_the_round_completes(make_federation):
    federation = make_federation(faults={1: "crash"})
    federation.start()
    snapshot = federation.wait(timeout=60)
    assert snapshot.status is RunStatus.FINISHED
    for result in snapshot.history:
        assert [d.device_id for d in result.devices] == [0, 2]
        assert [(p.device_id, p.kind) for p in result.problems] == [(1, "failed")]
        assert "crashed" in result.problems[0].reason
    assert snapshot.devices[1].status is DeviceStatus.FAILED
    assert snapshot.history[-1].global_accuracy > 0.5
    assert "device 1 failed" in snapshot.message or "Finished" in snapshot.message


def test_a_nan_update_is_rejected_and_reported(make_federation):
    federation = make_federation(faults={0: "nan"}, rounds=1)
    federation.start()
    snapshot = federation.wait(timeout=60)
    result = snapshot.history[0]
    assert [(p.device_id, p.kind) for p in result.problems] == [(0, "rejected")]
    assert "NaN" in result.problems[0].reason
    assert np.isfinite(result.global_loss) and result.global_accuracy > 0.4
    assert all(np.all(np.isfinite(w)) for w in federation.global_weights)
    assert snapshot.devices[0].status is DeviceStatus.REJECTED


def test_every_device_failing_keeps_the_model_and_says_so(make_federation):
    federation = make_federation(num_devices=2, faults={0: "nan", 1: "crash"}, rounds=1)
    before = federation.global_weights
    federation.start()
    snapshot = federation.wait(timeout=60)
    assert snapshot.status is RunStatus.FINISHED
    assert len(snapshot.history[0].problems) == 2
    assert all(np.array_equal(a, b) for a, b in zip(before, federation.global_weights))


def test_too_few_active_devices_waits_visibly_then_continues(make_federation):
    federation = make_federation(min_devices=2, rounds=1)
    federation.set_all_active(False)
    federation.start()
    snapshot = wait_until(lambda: (s := federation.snapshot()).status is RunStatus.WAITING and s)
    assert "0 active, at least 2 needed" in snapshot.message
    federation.set_active(0, True)
    time.sleep(0.7)
    assert federation.snapshot().status is RunStatus.WAITING and federation.snapshot().round == 0
    federation.set_active(2, True)
    snapshot = federation.wait(timeout=60)
    assert snapshot.status is RunStatus.FINISHED
    assert snapshot.history[0].selected == (0, 2)


def test_impossible_configurations_are_refused_with_reasons(fashion):
    with pytest.raises(ConfigError) as error:
        Federation(FederationConfig(num_devices=2, min_devices=3, fraction=0, learning_rate=-1), dataset=fashion)
    text = str(error.value).lower()
    assert "minimum devices" in text and "share of active devices sampled" in text and "learning rate" in text


def test_device_sampling_respects_fraction_and_minimum():
    rng = np.random.default_rng(0)
    assert len(select_devices(list(range(100)), 0.1, 1, rng)) == 10
    assert len(select_devices(list(range(100)), 0.01, 5, rng)) == 5
    assert select_devices([3, 7], 0.1, 5, rng) == [3, 7]
    picked = select_devices(list(range(50, 60)), 0.5, 1, rng)
    assert len(set(picked)) == 5 and all(50 <= d < 60 for d in picked)
