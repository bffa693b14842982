"""q-FedAvg, FedNova and SCAFFOLD: their math on hand-computed arrays and small real runs."""

from __future__ import annotations

import numpy as np
import pytest

from devices.device import Device, DeviceData
from devices.messages import ControlVariate, DeviceMetrics, DeviceUpdate, TrainInstructions
from devices.scaffold import control_correction, local_work, updated_control
from devices.stacked import StackedReplica
from devices.trainer import ModelReplica, OptimizerSpec
from engine.aggregation import fednova_step, qfedavg_step, scaffold_step
from engine.config import ConfigError, FederationConfig
from engine.federation import Federation
from engine.models import ModelRegistry
from engine.store import RunStore
from engine.strategies import AggregationSkipped, FedAvg, FedNova, QFedAvg
from tests.conftest import run_to_finish


def metrics(received_loss: float = 1.0, steps: int = 1) -> DeviceMetrics:
    return DeviceMetrics(0.0, 0.0, received_loss, 0.0, 0.0, 0.0, steps, 0.0)


def one(*values: float) -> list[np.ndarray]:
    return [np.array(values, np.float32)]


# --- q-FedAvg ------------------------------------------------------------------------------------------


def test_qfedavg_step_by_hand():
    # w = 1, local models 0 and 3, L = 1, q = 1, losses 2 and 0.5: dw = (1, -2), delta = (2, -1) -> sum 1;
    # h = (1 * 1 + 2, 1 * 4 + 0.5) -> 7.5; new w = 1 - 1 / 7.5
    result = qfedavg_step(one(1.0), [one(0.0), one(3.0)], [2.0, 0.5], q=1.0, lipschitz=1.0)
    np.testing.assert_allclose(result[0], [1 - 1 / 7.5])
    # L = 2 doubles dw: delta = (4, -2) -> 2 (x F^q); h = (1 * 4 + 4, 1 * 16 + 1) -> 25; new w = 1 - 2 / 25
    np.testing.assert_allclose(qfedavg_step(one(1.0), [one(0.0), one(3.0)], [2.0, 0.5], 1.0, 2.0)[0], [0.92])


def test_qfedavg_with_q_zero_is_the_unweighted_mean_and_q_favours_the_worse_device():
    models, losses = [one(0.0, 2.0), one(4.0, 6.0)], [0.1, 3.0]
    np.testing.assert_allclose(qfedavg_step(one(1.0, 1.0), models, losses, q=0.0, lipschitz=5.0)[0], [2.0, 4.0])
    fair = qfedavg_step(one(2.0, 4.0), models, losses, q=2.0, lipschitz=1.0)[0]
    assert fair[0] > 2.0 and fair[1] > 4.0  # moved towards the model of the device with loss 3


def test_qfedavg_strategy_uses_the_received_loss_and_needs_it():
    updates = [DeviceUpdate(0, one(0.0), 10, metrics(2.0)), DeviceUpdate(1, one(3.0), 999, metrics(0.5))]
    np.testing.assert_allclose(QFedAvg(q=1.0, learning_rate=1.0).aggregate(1, one(1.0), updates)[0],
                               [1 - 1 / 7.5], rtol=1e-6)
    updates.append(DeviceUpdate(2, one(1.0), 10, metrics(float("nan"))))
    with pytest.raises(AggregationSkipped, match="device\\(s\\) 2 reported none"):
        QFedAvg().aggregate(1, one(1.0), updates)
    assert any("local test share must be above 0" in p
               for p in FederationConfig(strategy="qfedavg", local_test_fraction=0.0).problems())


@pytest.mark.parametrize("strategy", ["qfedavg"])  # krum, multikrum, bulyan: tests/test_robust.py
def test_new_strategies_learn_on_a_small_iid_run(make_federation, strategy):
    snapshot = run_to_finish(make_federation(num_devices=4, train_samples=1200, test_samples=500, strategy=strategy))
    assert snapshot.history[-1].global_accuracy > 0.5, snapshot.history[-1].global_accuracy


# --- FedNova ---------------------------------------------------------------------------------------------


def test_fednova_step_by_hand():
    # w = 0; device 1: 1 step to 1 (d = -1); device 2: 4 steps to 2 (d = -0.5); p = (0.5, 0.5); tau_eff = 2.5
    # new w = 0 - 2.5 * (0.5 * -1 + 0.5 * -0.5) = 1.875 (FedAvg: 1.5)
    np.testing.assert_allclose(fednova_step(one(0.0), [one(1.0), one(2.0)], [1, 1], [1, 4])[0], [1.875])
    # equal work is FedAvg: p = (0.25, 0.75) -> 0.25 * 1 + 0.75 * 2
    np.testing.assert_allclose(fednova_step(one(0.0), [one(1.0), one(2.0)], [1, 3], [3, 3])[0], [1.75])


def test_local_work_with_momentum():
    assert local_work(5) == 5.0
    # rho = 0.5, 2 steps: a = (1 - 0.25, 1 - 0.5) / 0.5 = (1.5, 1) -> 2.5 = (2 - 0.5 * 0.75 / 0.5) / 0.5
    assert local_work(2, 0.5) == pytest.approx(2.5)


def test_fednova_normalises_real_devices_with_unequal_local_steps(fashion):
    """Three real devices with 64, 256 and 640 samples run 2, 8 and 20 steps; FedNova is the paper's formula."""
    replica = ModelReplica(lambda: ModelRegistry().build("mlp", (28, 28, 1), 10), OptimizerSpec("sgd", 0.0))
    start = replica.get_weights()
    updates, begin = [], 0
    for device_id, size in enumerate((64, 256, 640)):
        x, y = fashion.x_train[begin:begin + size], fashion.y_train[begin:begin + size]
        begin += size
        device = Device(device_id, DeviceData(x, y, fashion.x_test[:100], fashion.y_test[:100]))
        instructions = TrainInstructions(1, start, batch_size=32, learning_rate=0.05, seed=device_id)
        updates.append(device.fit(instructions, replica, lambda steps: None))
    assert [u.metrics.steps for u in updates] == [2, 8, 20]
    p = np.array([64, 256, 640]) / 960
    tau = np.array([2, 8, 20])
    expected = [g - (p @ tau) * sum(pi / ti * (g - u.weights[i]) for pi, ti, u in zip(p, tau, updates))
                for i, g in enumerate(start)]
    nova = FedNova().aggregate(1, start, updates)
    avg = FedAvg().aggregate(1, start, updates)
    for got, want in zip(nova, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # tau_eff = 15.2 < 20: the busiest device pulls less than under FedAvg, so the models differ clearly
    moved = lambda weights: np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(weights, start)))  # noqa: E731
    difference = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(nova, avg)))
    assert difference > 0.05 * moved(avg)


def test_fednova_learns_under_quantity_skew(make_federation):
    snapshot = run_to_finish(make_federation(num_devices=4, train_samples=1200, test_samples=500, strategy="fednova",
                                        partition="quantity", quantity_alpha=0.5))
    sizes = {d.samples for d in snapshot.history[-1].devices}
    assert len(sizes) > 1  # unequal sizes, so unequal local steps
    assert snapshot.history[-1].global_accuracy > 0.5, snapshot.history[-1].global_accuracy


# --- SCAFFOLD --------------------------------------------------------------------------------------------


def test_scaffold_server_step_by_hand():
    # x = 0, models 1 and 3: mean move 2, lr_g 0.5 -> 1; c = 1, changes 0.5 and 1.5 over N = 4 -> 1 + 2 / 4
    weights, control = scaffold_step(one(0.0), [one(1.0), one(3.0)], one(1.0), [one(0.5), one(1.5)], 4, 0.5)
    np.testing.assert_allclose(weights[0], [1.0])
    np.testing.assert_allclose(control[0], [1.5])


def test_scaffold_device_control_update_by_hand():
    # option II: c_i+ = c_i - c + (x - y) / (K lr) = 0.1 - 0.2 + (1 - 0.5) / (5 * 0.1) = 0.9, change 0.8
    instructions = TrainInstructions(1, one(1.0), learning_rate=0.1, control=ControlVariate(one(0.2)))
    new, change = updated_control(instructions, one(0.1), one(0.5), steps=5)
    np.testing.assert_allclose(new[0], [0.9], rtol=1e-6)
    np.testing.assert_allclose(change[0], [0.8], rtol=1e-6)
    # first round: c and c_i are zero, so c_i+ is the mean local gradient (x - y) / (K lr)
    first = TrainInstructions(1, one(1.0), learning_rate=0.1, control=ControlVariate())
    np.testing.assert_allclose(updated_control(first, None, one(0.5), steps=5)[0][0], [1.0])
    np.testing.assert_allclose(control_correction(ControlVariate(one(0.2)), one(0.5))[0], [-0.3], rtol=1e-6)
    assert control_correction(None, one(0.5)) is None and control_correction(ControlVariate(), None) is None


def test_the_correction_shifts_each_sgd_step_one_by_one_and_stacked(fashion):
    """Plain SGD, one step: the corrected model is the uncorrected one minus lr * (c - c_i), in both paths."""
    build = lambda: ModelRegistry().build("mlp", (28, 28, 1), 10)  # noqa: E731
    replica = ModelReplica(build, OptimizerSpec("sgd", 0.0))
    start = replica.get_weights()
    rng = np.random.default_rng(0)
    corrections = [[rng.normal(0, 0.1, w.shape).astype(np.float32) for w in start] for _ in range(2)]
    x, y = fashion.x_train[:32], fashion.y_train[:32]

    def one_by_one(correction):
        replica.set_weights(start)
        replica.reset_optimizer(0.1)
        replica.train(x, y, epochs=1, batch_size=32, seed=0, correction=correction)
        return replica.get_weights()

    plain = one_by_one(None)
    for correction in corrections:
        for got, base, c in zip(one_by_one(correction), plain, correction):
            np.testing.assert_allclose(got, base - 0.1 * c, atol=1e-5)
    stack = StackedReplica(build, OptimizerSpec("sgd", 0.0), width=2)
    stack.load(start)
    stack.reset_optimizer(0.1)
    stack.train([(x, y), (x, y)], epochs=1, batch_size=32, seeds=[0, 0], corrections=corrections)
    for device, correction in zip(stack.get_weights(), corrections):
        for got, base, c in zip(device, plain, correction):
            np.testing.assert_allclose(got, base - 0.1 * c, atol=1e-5)


def test_scaffold_learns_and_a_resume_keeps_the_device_control_variates(fashion, tmp_path):
    store = RunStore(tmp_path / "runs")
    config = FederationConfig(model="mlp", num_devices=4, train_samples=1200, test_samples=500, rounds=2,
                              strategy="scaffold", optimizer="sgd", learning_rate=0.05)
    federation = Federation(config, dataset=fashion, store=store)
    try:
        snapshot = run_to_finish(federation)
        controls = {d.device_id: d.state()["control"] for d in federation.devices}
        server = federation.strategy._control
    finally:
        federation.close()
    assert snapshot.history[-1].global_accuracy > 0.5, snapshot.history[-1].global_accuracy
    assert all(np.any(c[0] != 0) for c in controls.values())
    # the server's c is the mean of the devices' c_i (all took part in every round)
    np.testing.assert_allclose(server[0], np.mean([c[0] for c in controls.values()], axis=0), atol=1e-6)
    # SCAFFOLD sends a control-variate change as large as the model next to every update
    assert snapshot.history[-1].bytes_up > 2 * sum(w.nbytes for w in federation.global_weights) * 4 * 0.99
    resumed = Federation.reopen(store, federation.run_id, 1, dataset=fashion)
    try:
        for device in resumed.devices:
            for got, want in zip(device.state()["control"], controls[device.device_id]):
                np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(resumed.strategy._control[0], server[0])
        assert run_to_finish(resumed).round == 3
    finally:
        resumed.close()


def test_scaffold_needs_local_sgd():
    problems = FederationConfig(strategy="scaffold").problems()
    assert any("scaffold's control variates assume local SGD; use --optimizer sgd" in p for p in problems)
    assert not FederationConfig(strategy="scaffold", optimizer="sgd").problems()


def test_flower_runs_take_scaffold_and_check_krum_per_round():
    from flower_app.config import RUN_DEFAULTS, federation_config

    # SCAFFOLD's c_i lives in each SuperNode's context.state (tests/test_flower_scaffold.py)
    assert federation_config({**RUN_DEFAULTS, "strategy": "scaffold", "optimizer": "sgd"},
                             num_devices=3).strategy == "scaffold"
    # nodes announce themselves at run time, so Krum's n > 2f+2 is checked per round, not up front
    assert federation_config({**RUN_DEFAULTS, "strategy": "krum"}, num_devices=2).strategy == "krum"
