"""Strategy-specific charts: which models a robust rule kept (from a real Multi-Krum round), FedBuff's staleness."""

from __future__ import annotations

from functools import partial

import numpy as np

from app import strategy_charts
from devices.pool import WorkerPool
from devices.trainer import ModelReplica, OptimizerSpec
from engine.config import FederationConfig
from engine.models import ModelRegistry
from engine.results import DeviceRoundResult, RoundResult
from engine.rounds import RoundRunner
from engine.setup import build_devices, server_test_set
from engine.store import RunStore, round_from_record
from engine.strategies import build_strategy
from engine.transport import InProcessTransport
from tests.test_app import make


def device(device_id: int, staleness: int = 0) -> DeviceRoundResult:
    return make(DeviceRoundResult, device_id=device_id, staleness=staleness)


def result(number: int, devices, kept=None, simulated: float = 0.0) -> RoundResult:
    return make(RoundResult, round=number, devices=tuple(devices), kept=kept, simulated_time=simulated,
                confusion=np.zeros((0, 0)), global_accuracy=0.5)


def test_selection_matrix_marks_kept_left_out_and_absent_devices():
    history = [result(1, [device(0), device(1), device(2)], kept=(0, 2)), result(2, [device(0), device(2)])]
    matrix, devices = strategy_charts.selection_matrix(history)
    assert devices == [0, 1, 2]
    assert matrix.tolist() == [[2, 2], [1, 0], [2, 2]]
    assert strategy_charts.has_selection(history) and not strategy_charts.has_selection(history[1:])
    assert strategy_charts.selection_caption(history) == "Left out most often: device 1 (1×)."
    assert strategy_charts.selection_figure(history).data[0].z.tolist() == matrix.tolist()


def test_staleness_points_clock_and_caption():
    history = [result(1, [device(0), device(1)], simulated=9.0), result(2, [device(0), device(3, 2)], simulated=4.5)]
    assert strategy_charts.staleness_points(history) == {0: ([1, 2], [0, 0]), 1: ([1], [0]), 3: ([2], [2])}
    assert strategy_charts.simulated_clock(history) == [9.0, 13.5]
    assert strategy_charts.is_asynchronous(history) and not strategy_charts.is_asynchronous(history[:1])
    assert "staleness mean 0.50, largest 2" in strategy_charts.staleness_caption(history)
    assert len(strategy_charts.staleness_figure(history).data) == 4  # three devices' markers and the accuracy


def test_multikrum_reports_the_models_it_kept_and_the_store_keeps_them(fashion, tmp_path):
    config = FederationConfig(model="mlp", num_devices=5, train_samples=250, test_samples=100, batch_size=32,
                              strategy="multikrum", faults={4: "random"}, stack_width=1)
    build = partial(ModelRegistry().build, "mlp", fashion.image_shape, fashion.num_classes)
    make_replica = partial(ModelReplica, build, OptimizerSpec(config.optimizer, config.momentum))
    pool = WorkerPool(make_replica, 1)
    try:
        evaluator = make_replica()
        transport = InProcessTransport(build_devices(fashion, config), pool, 1, lambda device, steps: None)
        runner = RoundRunner(config, transport, evaluator, build_strategy("multikrum"), server_test_set(fashion, config),
                             lambda device, status, detail: None)
        weights, outcome = runner.run(1, evaluator.get_weights(), range(5), lambda steps: None)
    finally:
        pool.shutdown()
    assert len(outcome.devices) == 5 and outcome.kept == (0, 1, 2, 3)  # n - f = 4 kept; the random model left out
    assert strategy_charts.selection_matrix([outcome])[0][:, 0].tolist() == [2, 2, 2, 2, 1]
    store = RunStore(tmp_path / "runs")
    run_id = store.create_run(config)
    store.record_round(run_id, outcome, weights, {}, private=False)
    assert store.load_history(run_id)[0].kept == (0, 1, 2, 3)
    assert round_from_record(outcome.to_json_dict()).kept == (0, 1, 2, 3)
