"""Krum, Multi-Krum and Bulyan: their math on hand-computed arrays, their device-count conditions, real runs."""

from __future__ import annotations

import numpy as np
import pytest

from devices.messages import DeviceMetrics, DeviceUpdate
from engine.cli import main as cli_main
from engine.config import FederationConfig
from engine.robust import (
    bulyan,
    bulyan_selection,
    closest_to_median_mean,
    flatten,
    krum_scores,
    multi_krum,
    unflatten_like,
)
from engine.strategies import AggregationSkipped, Bulyan, Krum, MultiKrum, build_strategy, strategy_problems
from tests.conftest import run_to_finish

METRICS = DeviceMetrics(0, 0, 0, 0, 0, 0, 0, 0)
LINE = [0.0, 1.0, 2.0, 10.0, 100.0]  # five one-weight models


def models(values) -> list[list[np.ndarray]]:
    return [[np.array([v], np.float32)] for v in values]


def as_updates(weight_lists) -> list[DeviceUpdate]:
    return [DeviceUpdate(i, w, 100 * (i + 1), METRICS) for i, w in enumerate(weight_lists)]


# --- the math --------------------------------------------------------------------------------------


def test_krum_scores_sum_the_n_minus_f_minus_2_nearest_squared_distances():
    # n=5, f=1: two neighbours each. 0: 1+4; 1: 1+1; 2: 1+4; 10: 64+81; 100: 8100+9604
    points = np.array(LINE)[:, None]
    np.testing.assert_allclose(krum_scores(points, 1), [5, 2, 5, 145, 17704])
    # f=0: three neighbours. 0: 1+4+100; 1: 1+1+81
    np.testing.assert_allclose(krum_scores(points, 0)[:2], [105, 83])


def test_krum_picks_one_model_and_multikrum_averages_the_best_m():
    np.testing.assert_allclose(multi_krum(models(LINE), f=1, m=1)[0][0], [1.0])
    model, chosen = multi_krum(models(LINE), f=1, m=3)  # scores 2, 5, 5: models 1, 0, 2
    assert chosen == [0, 1, 2]
    np.testing.assert_allclose(model[0], [1.0])
    model, chosen = multi_krum(models(LINE), f=1, m=4)  # plus 10 (score 145)
    np.testing.assert_allclose(model[0], [13 / 4])


def test_krum_distances_span_every_layer_and_the_result_keeps_the_shapes():
    layered = [[np.array([x], np.float32), np.array([[y, 0.0]], np.float32)]
               for x, y in [(0, 0), (0, 3), (0, 1), (4, 1), (9, 9)]]
    # f=1: two nearest squared distances. (0,0): 1 + 9 = 10; (0,3): 4 + 9 = 13; (0,1): 1 + 4 = 5;
    # (4,1): 16 + 17 = 33; (9,9): far. Krum picks (0, 1)
    model, chosen = multi_krum(layered, f=1, m=1)
    assert chosen == [2] and [a.shape for a in model] == [(1,), (1, 2)]
    np.testing.assert_allclose(flatten(model), [0, 1, 0])
    np.testing.assert_array_equal(unflatten_like(np.arange(3.0), model)[1], [[1.0, 2.0]])


def test_bulyan_selects_n_minus_2f_by_repeated_krum_then_averages_values_nearest_the_median():
    points = np.array([0.0, 1.0, 2.0, 3.0, 5.0, 100.0, -100.0])[:, None]
    # f=1, n=7: pick 2 (score 15), then 3 (17 of the rest), then 1 (17), then 0 (tie with 5 at 25, lower index),
    # then 5 (tie with 100 at 9025): the two outliers are left out
    assert bulyan_selection(points, 1) == [2, 3, 1, 0, 4]
    # beta = 5 - 2 = 3 values nearest the median 2 of {0, 1, 2, 3, 5}: 1, 2, 3
    model, selected = bulyan(models(points[:, 0]), 1)
    assert selected == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(model[0], [2.0])


def test_closest_to_median_mean_is_per_coordinate():
    points = np.array([[0, 10], [1, 0], [5, 1], [6, 2], [7, 30]], float)
    # column 0: median 5, nearest three 5, 6, 7 -> 6; column 1: median 2, nearest 2, 1, 0 -> 1
    np.testing.assert_allclose(closest_to_median_mean(points, 3), [6.0, 1.0])


def test_bulyan_refuses_fewer_than_4f_plus_3_models():
    with pytest.raises(ValueError, match="4f\\+3 = 7"):
        bulyan(models(range(6)), 1)


# --- strategies, parameters, device counts ---------------------------------------------------------------


def test_strategies_ignore_sample_counts_and_skip_rounds_with_too_few_updates():
    np.testing.assert_allclose(Krum(f=1).aggregate(1, models([0])[0], as_updates(models(LINE)))[0], [1.0])
    np.testing.assert_allclose(MultiKrum(f=1).aggregate(1, models([0])[0], as_updates(models(LINE)))[0], [13 / 4])
    with pytest.raises(AggregationSkipped, match="at least 5 updates, 4 arrived"):
        Krum(f=1).aggregate(1, models([0])[0], as_updates(models(LINE[:4])))
    with pytest.raises(AggregationSkipped, match="at least 7 updates, 5 arrived"):
        Bulyan(f=1).aggregate(1, models([0])[0], as_updates(models(LINE)))
    assert Krum(f=0).aggregate(1, models([0])[0], as_updates(models([3, 4, 4.5])))[0][0] == 4.0  # one neighbour: 1, 0.25, 0.25


def test_f_and_m_must_be_whole_non_negative_numbers():
    assert strategy_problems("krum", {"f": 1.5}) == ["krum: f must be a whole number, got 1.5"]
    assert "f must be >= 0" in strategy_problems("bulyan", {"f": -1})[0]
    assert build_strategy("multikrum", {"f": 2.0, "m": 3.0}).selected_count(10) == 3
    assert build_strategy("multikrum", {"f": 2.0}).selected_count(10) == 8


@pytest.mark.parametrize(
    "strategy, devices, fraction, message",
    [
        ("krum", 4, 1.0, "krum with f=1 needs more than 2f+2, i.e. at least 5 devices per round; "
                         "this configuration trains 4"),
        ("multikrum", 10, 0.4, "at least 5 devices per round; this configuration trains 4"),
        ("bulyan", 6, 1.0, "bulyan with f=1 needs at least 4f+3, i.e. at least 7 devices per round"),
    ],
)
def test_config_validation_names_the_device_condition(strategy, devices, fraction, message):
    config = FederationConfig(strategy=strategy, num_devices=devices, fraction=fraction)
    assert any(message in problem for problem in config.problems())
    assert not FederationConfig(strategy=strategy, num_devices=7).problems()


def test_cli_rejects_too_few_devices_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        cli_main(["run", "--strategy", "bulyan", "--strategy-param", "f=2", "--devices", "10", "--no-save"])
    assert exited.value.code == 2
    assert "bulyan with f=2 needs at least 4f+3, i.e. at least 11 devices per round" in capsys.readouterr().err


# --- real runs ------------------------------------------------------------------------------------------


def test_krum_multikrum_and_bulyan_hold_where_fedavg_breaks_under_a_scaling_attack(make_federation):
    accuracy = {}
    for strategy in ("fedavg", "krum", "multikrum", "bulyan"):
        snapshot = run_to_finish(make_federation(num_devices=7, train_samples=2100, test_samples=500, faults={3: "scale"},
                                            strategy=strategy, strategy_params={"f": 1} if strategy != "fedavg" else {}))
        accuracy[strategy] = snapshot.history[-1].global_accuracy
    # measured: fedavg 0.09, krum 0.63 (one device's model), multikrum 0.72, bulyan 0.69
    assert min(accuracy["krum"], accuracy["multikrum"], accuracy["bulyan"]) > 0.5, accuracy
    assert accuracy["fedavg"] < min(accuracy["krum"], accuracy["multikrum"], accuracy["bulyan"]) - 0.2, accuracy


def test_a_round_with_too_few_updates_is_reported_and_keeps_the_model(make_federation):
    federation = make_federation(num_devices=5, train_samples=1000, rounds=1, faults={4: "crash"}, strategy="krum")
    before = federation.global_weights
    snapshot = run_to_finish(federation)
    result = snapshot.history[0]
    assert result.devices == ()
    assert sorted(p.kind for p in result.problems) == ["failed"] + ["not aggregated"] * 4
    assert "krum with f=1 needs at least 5 updates, 4 arrived" in result.problems[0].reason
    for a, b in zip(before, federation.global_weights):
        np.testing.assert_array_equal(a, b)
