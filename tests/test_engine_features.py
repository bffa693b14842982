"""Strategies, unreliable devices, privacy and compression inside real federated runs."""

from __future__ import annotations

import numpy as np
import pytest

from devices.trainer import ModelReplica, OptimizerSpec
from engine.models import ModelRegistry
from engine.privacy import epsilon_after
from tests.conftest import run_to_finish as run


def test_secure_aggregation_gives_the_plain_aggregate(make_federation):
    plain = make_federation(rounds=2)
    secure = make_federation(rounds=2, secure_aggregation=True)
    plain_run, secure_run = run(plain), run(secure)
    for a, b in zip(plain.global_weights, secure.global_weights):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert secure_run.history[-1].global_accuracy == pytest.approx(plain_run.history[-1].global_accuracy, abs=0.002)


def test_secure_aggregation_survives_a_device_crashing_after_masks_were_agreed(make_federation):
    plain = make_federation(rounds=1, faults={1: "crash"})
    secure = make_federation(rounds=1, faults={1: "crash"}, secure_aggregation=True)
    run(plain), run(secure)
    for a, b in zip(plain.global_weights, secure.global_weights):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_compression_shrinks_traffic_and_still_learns(make_federation):
    plain = run(make_federation(rounds=2))
    for method, ratio in (("q8", 3.9), ("q4", 7.5), ("topk", 20)):
        snapshot = run(make_federation(rounds=2, compression=method, topk_fraction=0.02))
        last = snapshot.history[-1]
        assert last.compression_ratio > ratio
        assert last.bytes_up * ratio < plain.history[-1].bytes_up
        assert last.global_accuracy > 0.5, method


def test_central_dp_reports_the_accountants_epsilon_each_round(make_federation):
    snapshot = run(make_federation(rounds=3, num_devices=4, fraction=0.5, clip_norm=1.0, noise_multiplier=1.0))
    epsilons = [r.epsilon for r in snapshot.history]
    assert epsilons == sorted(epsilons) and epsilons[0] > 0
    assert epsilons[-1] == pytest.approx(epsilon_after(1.0, 0.5, 3, 1e-5))


def test_stragglers_past_the_deadline_and_dropouts_are_reported(make_federation):
    snapshot = run(make_federation(rounds=2, num_devices=4, slowdowns={0: 1e6}, round_deadline=60.0, dropout=0.3,
                                   seed=1))
    kinds = {(p.device_id, p.kind) for r in snapshot.history for p in r.problems}
    assert (0, "straggler") in kinds
    assert any(kind == "dropped out" for _, kind in kinds)
    assert all(0 not in [d.device_id for d in r.devices] for r in snapshot.history)


def test_fedprox_keeps_local_models_near_the_global_one(fashion):
    replica = ModelReplica(lambda: ModelRegistry().build("mlp", (28, 28, 1), 10), OptimizerSpec("sgd", 0.0))
    start = replica.get_weights()
    x, y = fashion.x_train[:640], fashion.y_train[:640]

    def drift(mu: float) -> float:
        replica.set_weights(start)
        replica.reset_optimizer(0.05)
        replica.train(x, y, epochs=2, batch_size=32, seed=0, proximal_mu=mu)
        return float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(replica.get_weights(), start))))

    assert drift(10.0) < 0.6 * drift(0.0)


def test_median_and_trimmed_mean_hold_where_fedavg_breaks_under_a_scaling_attack(make_federation):
    accuracy = {}
    for strategy in ("fedavg", "fedmedian", "fedtrimmedavg"):
        snapshot = run(make_federation(rounds=2, num_devices=5, train_samples=4000, faults={0: "scale"},
                                       strategy=strategy))
        accuracy[strategy] = snapshot.history[-1].global_accuracy
    assert accuracy["fedmedian"] > 0.6 and accuracy["fedtrimmedavg"] > 0.6
    assert accuracy["fedavg"] < accuracy["fedmedian"] - 0.1


@pytest.mark.parametrize("strategy", ["fedavgm", "fedprox", "fedadagrad", "fedadam", "fedyogi"])
def test_every_strategy_learns_in_a_real_run(make_federation, strategy):
    snapshot = run(make_federation(rounds=3, strategy=strategy))
    assert snapshot.history[-1].global_accuracy > 0.5
