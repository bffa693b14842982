"""FedBuff: its math on hand-computed arrays, its asynchronous schedule on small real runs, where it is refused."""

from __future__ import annotations

import numpy as np
import pytest

from devices.messages import DeviceMetrics, DeviceUpdate
from engine.async_rounds import AsyncRoundRunner, concurrency, rebase
from engine.cli import strategy_help
from engine.config import FederationConfig
from engine.federation import Federation
from engine.results import RunStatus
from engine.setup import build_devices, server_test_set
from engine.store import RunStore
from engine.strategies import STRATEGIES, FedBuff, build_strategy
from engine.strategies.fedbuff import STALENESS, fedbuff_step, staleness_weight
from engine.transport import InProcessTransport
from flower_app.backend import unsupported
from tests.conftest import run_to_finish, wait_until
from tests.test_engine_composition import bench  # noqa: F401  (its worker and evaluator)
from tests.test_app import app_env, make_app, needs_data, no_exceptions, plotly_keys, plotly_spec  # noqa: F401
from tests.test_app import federation_of

TINY = dict(model="mlp", num_devices=4, train_samples=400, test_samples=200, batch_size=32, stack_width=1,
            strategy="fedbuff")


def one(*values: float) -> list[np.ndarray]:
    return [np.array(values, np.float32)]


def update(device_id: int, weights, staleness: int = 0) -> DeviceUpdate:
    return DeviceUpdate(device_id, weights, 10, DeviceMetrics(0, 0, 0, 0, 0, 0, 1, 0.0), extras={STALENESS: staleness})


# --- the math ---------------------------------------------------------------------------------------------


def test_staleness_weights_by_hand():
    assert staleness_weight(0) == 1.0
    assert staleness_weight(3) == 0.5  # the paper's 1 / sqrt(1 + 3)
    assert staleness_weight(8) == pytest.approx(1 / 3)
    assert staleness_weight(1, exponent=1.0) == 0.5 and staleness_weight(5, exponent=0.0) == 1.0
    with pytest.raises(ValueError, match="staleness must be >= 0, got -1"):
        staleness_weight(-1)


def test_fedbuff_step_by_hand():
    # w = 1; deltas +2 (fresh) and -1 (staleness 3, weight 0.5); K = 2: w + (2 - 0.5) / 2 = 1.75
    np.testing.assert_allclose(fedbuff_step(one(1.0), [one(3.0), one(0.0)], [0, 3], 0.5, 1.0, 2)[0], [1.75])
    np.testing.assert_allclose(fedbuff_step(one(1.0), [one(3.0), one(0.0)], [0, 3], 0.5, 2.0, 2)[0], [2.5])
    # a buffer applied early (one update, K = 2) moves half as far; more than K (a synchronous round): the mean
    np.testing.assert_allclose(fedbuff_step(one(1.0), [one(3.0)], [0], 0.5, 1.0, 2)[0], [2.0])
    np.testing.assert_allclose(fedbuff_step(one(0.0), [one(1.0), one(2.0), one(6.0)], [0, 0, 0], 0.5, 1.0, 2)[0],
                               [3.0])
    with pytest.raises(ValueError, match="2 models but 1 staleness"):
        fedbuff_step(one(0.0), [one(1.0), one(2.0)], [0], 0.5, 1.0, 2)


def test_strategy_reads_each_updates_staleness_and_ignores_sample_counts():
    strategy = FedBuff(buffer_size=2, server_learning_rate=1.0, staleness_exponent=1.0)
    # deltas +4 (staleness 1: weight 1/2) and +2 (fresh): w + (2 + 2) / 2 = 2
    result = strategy.aggregate(1, one(0.0), [update(0, one(4.0), 1), update(1, one(2.0), 0)])
    assert result[0].dtype == np.float32
    np.testing.assert_allclose(result[0], [2.0])


def test_rebase_and_concurrency():
    np.testing.assert_allclose(rebase(one(5.0, 1.0), one(4.0, 2.0), one(10.0, 10.0))[0], [11.0, 9.0])
    assert concurrency(10, 1.0, 1) == 10 and concurrency(10, 0.25, 1) == 3 and concurrency(2, 0.1, 3) == 2


# --- where it can run -----------------------------------------------------------------------------------------


def test_registered_with_its_parameters_in_the_cli_and_refused_where_it_cannot_compose():
    assert STRATEGIES["fedbuff"] is FedBuff and FedBuff.asynchronous and not FedBuff.linear
    assert FedBuff.parameters() == {"buffer_size": 3, "server_learning_rate": 1.0, "staleness_exponent": 0.5}
    assert "fedbuff (buffer_size=3, server_learning_rate=1, staleness_exponent=0.5)" in strategy_help()
    assert build_strategy("fedbuff", {"buffer_size": 5}).capacity == 5
    assert "fedbuff: buffer_size must be a whole number, got 2.5" in FederationConfig(
        strategy="fedbuff", strategy_params={"buffer_size": 2.5}).problems()
    assert any("buffer_size (5) cannot exceed the devices training at once (4)" in p
               for p in FederationConfig(**{**TINY, "strategy_params": {"buffer_size": 5}}).problems())
    secure = FederationConfig(**TINY, secure_aggregation=True).problems()
    assert secure and all("fedbuff" in p for p in secure)
    assert any("central DP" in p for p in FederationConfig(**TINY, clip_norm=1.0, noise_multiplier=0.5).problems())
    assert FederationConfig(**TINY, clip_norm=1.0, local_noise_multiplier=0.5).problems() == []
    assert unsupported(FederationConfig(**TINY)) == []  # Flower runs it on the wall clock (test_flower_research)


# --- the asynchronous schedule, for real -------------------------------------------------------------------


def async_runner(fashion, bench, **changes) -> tuple[AsyncRoundRunner, list]:
    """A runner driven step by step (no federation thread), on the composition test's worker and evaluator."""
    _, pool, evaluator, _ = bench
    config = FederationConfig(**{**TINY, **changes})
    devices = build_devices(fashion, config)
    strategy = build_strategy("fedbuff", config.strategy_params)
    runner = AsyncRoundRunner(config, InProcessTransport(devices, pool, 1, lambda device, steps: None), evaluator,
                              strategy, server_test_set(fashion, config), lambda device, status, detail: None)
    return runner, evaluator.get_weights()


def test_a_device_switched_off_loses_its_update_and_local_dp_is_accounted_per_step(fashion, bench):
    runner, weights = async_runner(fashion, bench, strategy_params={"buffer_size": 2}, slowdowns={3: 4.0},
                                   clip_norm=1.0, local_noise_multiplier=0.5)
    weights, first = runner.run(1, weights, [0, 1, 2, 3], lambda steps: None)
    assert len(first.devices) == 2 and first.epsilon is not None and first.simulated_time > 0
    assert {f.device_id for f in runner.flights} >= {3}  # the slow device is still training
    for server_round in (2, 3, 4, 5):
        weights, result = runner.run(server_round, weights, [0, 1, 2], lambda steps: None)
        assert 3 not in result.selected and len(result.devices) == 2
        assert all(np.all(np.isfinite(w)) for w in weights)
    assert result.epsilon > first.epsilon


def test_fedbuff_learns_records_staleness_and_keeps_it_in_the_store(fashion, tmp_path):
    store = RunStore(tmp_path / "runs")
    config = FederationConfig(**{**TINY, "train_samples": 1200, "test_samples": 500, "rounds": 6,
                                 "strategy_params": {"buffer_size": 2}, "slowdowns": {3: 3.0}})
    federation = Federation(config, dataset=fashion, store=store)
    try:
        snapshot = run_to_finish(federation)
    finally:
        federation.close()
    history = snapshot.history
    assert snapshot.status is RunStatus.FINISHED and len(history) == 6
    assert history[-1].global_accuracy > 0.5, history[-1].global_accuracy
    assert all(1 <= len(r.devices) <= 2 and r.simulated_time >= 0 for r in history)  # 0: arrived together
    assert sum(r.simulated_time for r in history) > 0
    slow = [d.staleness for r in history for d in r.devices if d.device_id == 3]
    assert slow and min(slow) > 0  # the slow device's updates arrive after the fast ones moved the model on
    assert history[0].devices[0].staleness == 0
    stored = store.load_history(federation.run_id)
    assert [[d.staleness for d in r.devices] for r in stored] == [[d.staleness for d in r.devices] for r in history]
    assert [r.simulated_time for r in stored] == [r.simulated_time for r in history]


# --- the dashboard ---------------------------------------------------------------------------------------------


@needs_data
def test_dashboard_offers_fedbuff_with_its_parameters_and_draws_the_staleness(make_app, app_env):
    app_env.setenv("FL_AUTO_CREATE", "0")
    app_env.setenv("FL_DEFAULT_ROUNDS", "4")
    app_env.setenv("FL_DEFAULT_STACK_WIDTH", "1")  # devices one by one: no stack compiled per buffer width
    at = make_app().run()
    at.selectbox(key="setup_strategy").set_value("fedbuff").run()
    assert [n.key for n in at.sidebar.number_input if n.key.startswith("setup_fedbuff_")] == [
        "setup_fedbuff_buffer_size", "setup_fedbuff_server_learning_rate", "setup_fedbuff_staleness_exponent"]
    at.number_input(key="setup_fedbuff_buffer_size").set_value(2)
    at.number_input(key="setup_slow_count").set_value(1).run()
    at.button(key="apply").click().run()
    no_exceptions(at)
    federation = federation_of(at)
    assert (federation.config.strategy, federation.config.strategy_params["buffer_size"]) == ("fedbuff", 2)
    at.button(key="start").click().run()
    wait_until(lambda: not federation.snapshot().is_live and federation.snapshot().round == 4, timeout=180)
    at.run()
    no_exceptions(at)
    assert "staleness" in plotly_keys(at)
    spec = plotly_spec(at, "staleness")
    assert any(max(trace["y"]) > 0 for trace in spec["data"] if trace.get("mode") == "markers")
