"""The strategies' math, checked against hand-computed values on tiny arrays."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from devices.messages import DeviceMetrics, DeviceUpdate
from engine.aggregation import (
    adagrad_second_moment,
    adam_second_moment,
    coordinate_median,
    trim_count,
    trimmed_mean,
    weighted_average,
    yogi_second_moment,
)
from engine.strategies import (
    STRATEGIES,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    LocalOptions,
    Strategy,
    build_strategy,
    strategy_problems,
)

METRICS = DeviceMetrics(0, 0, 0, 0, 0, 0, 0, 0)


def w(*values: float) -> list[np.ndarray]:
    """A one-layer model with the given coordinates."""
    return [np.array(values, dtype=np.float32)]


def updates(*models: list[np.ndarray], samples: list[int] | None = None) -> list[DeviceUpdate]:
    counts = samples or [1] * len(models)
    return [DeviceUpdate(i, model, n, METRICS, control_delta=[np.zeros_like(a) for a in model])
            for i, (model, n) in enumerate(zip(models, counts))]


def step(strategy: Strategy, server_round: int, global_weights: list[np.ndarray], mean: list[np.ndarray]):
    """One round in which the devices' models average to ``mean``."""
    return strategy.aggregate(server_round, global_weights, updates(mean))


# --- registry, metadata -----------------------------------------------------------------------------


def test_all_strategies_are_registered_in_order():
    assert tuple(STRATEGIES) == (
        "fedavg", "fedavgm", "fedprox", "fedadagrad", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg",
        "krum", "multikrum", "bulyan", "qfedavg", "fednova", "scaffold", "fedbuff",
    )
    for name, cls in STRATEGIES.items():
        assert cls.name == name and cls.title and cls.summary and cls.__doc__
        assert isinstance(build_strategy(name), cls)
    assert Strategy.summary == ""


def test_defaults_and_linearity():
    assert FedAvgM.parameters() == {"server_learning_rate": 1.0, "server_momentum": 0.5}
    assert FedProx.parameters() == {"proximal_mu": 0.01}
    assert FedAdam.parameters() == {"server_learning_rate": 0.03, "tau": 1e-3, "beta_1": 0.9, "beta_2": 0.99}
    assert FedYogi.parameters() == FedAdam.parameters()
    assert FedAdagrad.parameters() == {"server_learning_rate": 0.1, "tau": 1e-3, "beta_1": 0.9}
    assert FedTrimmedAvg.parameters() == {"beta": 0.2}
    assert FedAvg.parameters() == FedMedian.parameters() == {}
    linear = {name for name, cls in STRATEGIES.items() if cls.linear}
    assert linear == {"fedavg", "fedavgm", "fedprox", "fedadagrad", "fedadam", "fedyogi"}
    assert "[0, 1)" in FedAvgM.parameter_help()["server_momentum"]


# --- FedAvgM ------------------------------------------------------------------------------------------


def test_fedavgm_momentum_carries_over_rounds():
    strategy = FedAvgM(server_learning_rate=0.5, server_momentum=0.5)
    # round 1: v = 0.5*0 + (1 - 0) = 1; new = 1 - 0.5*1 = 0.5
    g1 = step(strategy, 1, w(1.0), w(0.0))
    np.testing.assert_allclose(g1[0], [0.5])
    # round 2: v = 0.5*1 + (0.5 - 0.25) = 0.75; new = 0.5 - 0.5*0.75 = 0.125
    g2 = step(strategy, 2, g1, w(0.25))
    np.testing.assert_allclose(g2[0], [0.125])
    # round 3, devices did not move: momentum alone still moves the model. v = 0.375; new = 0.125 - 0.1875
    g3 = step(strategy, 3, g2, g2)
    np.testing.assert_allclose(g3[0], [-0.0625])


def test_fedavgm_without_momentum_at_rate_one_is_fedavg():
    strategy, models = FedAvgM(server_learning_rate=1.0, server_momentum=0.0), [w(0.0, 4.0), w(2.0, 8.0)]
    for server_round in (1, 2):
        result = strategy.aggregate(server_round, w(9.0, 9.0), updates(*models, samples=[1, 3]))
        np.testing.assert_allclose(result[0], FedAvg().aggregate(1, w(9.0, 9.0), updates(*models, samples=[1, 3]))[0])


# --- FedProx ------------------------------------------------------------------------------------------


def test_fedprox_asks_devices_for_the_proximal_term_and_averages_like_fedavg():
    assert FedProx().local_options() == LocalOptions(proximal_mu=0.01)
    assert FedProx(proximal_mu=0.5).local_options().proximal_mu == 0.5
    assert FedAvg().local_options() == LocalOptions(proximal_mu=0.0)
    assert FedAdam().local_options().proximal_mu == 0.0
    batch = updates(w(0.0), w(1.0), samples=[100, 300])
    np.testing.assert_allclose(FedProx().aggregate(1, w(5.0), batch)[0], [0.75])


# --- FedOpt family (Reddi et al. 2021, Algorithm 2) --------------------------------------------------


def test_fedadam_two_steps_by_hand():
    strategy = FedAdam(server_learning_rate=1.0, beta_1=0.5, beta_2=0.5, tau=1.0)  # m = 0, v = tau^2 = 1
    # round 1, delta = (1, 7): m = (0.5, 3.5); v = 0.5*1 + 0.5*delta^2 = (1, 25); step = m / (sqrt(v) + 1)
    g1 = step(strategy, 1, w(0.0, 0.0), w(1.0, 7.0))
    np.testing.assert_allclose(g1[0], [0.25, 7 / 12], rtol=1e-6)
    # round 2, delta = (-1, 5): m = (0.25 - 0.5, 1.75 + 2.5) = (-0.25, 4.25); v = (0.5 + 0.5, 12.5 + 12.5) = (1, 25)
    g2 = step(strategy, 2, g1, [g1[0] + np.array([-1.0, 5.0], np.float32)])
    np.testing.assert_allclose(g2[0], [0.25 - 0.25 / 2, 7 / 12 + 4.25 / 6], rtol=1e-6)


def test_fedadam_moments_are_per_coordinate_and_start_at_zero_and_tau_squared():
    # No movement in round 1: m stays 0, so the model does not move either.
    strategy = FedAdam(server_learning_rate=1.0, beta_1=0.5, beta_2=0.5, tau=1.0)
    np.testing.assert_array_equal(step(strategy, 1, w(3.0, -2.0), w(3.0, -2.0))[0], [3.0, -2.0])


def test_fedadagrad_accumulates_squares_by_hand():
    strategy = FedAdagrad(server_learning_rate=1.0, beta_1=0.5, tau=3.0)  # v starts at tau^2 = 9
    # round 1, delta = 4: m = 2; v = 9 + 16 = 25; new = 0 + 2 / (5 + 3) = 0.25
    g1 = step(strategy, 1, w(0.0), w(4.0))
    np.testing.assert_allclose(g1[0], [0.25])
    # round 2, delta = 12: m = 1 + 6 = 7; v = 25 + 144 = 169; new = 0.25 + 7 / (13 + 3) = 0.6875
    g2 = step(strategy, 2, g1, w(12.25))
    np.testing.assert_allclose(g2[0], [0.6875])


def test_yogi_second_moment_moves_additively_towards_delta_squared():
    v = [np.array([1.0, 3.0, 2.0])]
    delta = [np.array([2.0, 1.0, 0.0])]  # delta^2 = (4, 1, 0)
    # v < delta^2: grows by (1-b2)*delta^2 = 2; v > delta^2: shrinks by (1-b2)*delta^2 = 0.5; delta = 0: unchanged
    np.testing.assert_allclose(yogi_second_moment(v, delta, 0.5)[0], [3.0, 2.5, 2.0])
    # Adam, for contrast, moves multiplicatively: 0.5*v + 0.5*delta^2
    np.testing.assert_allclose(adam_second_moment(v, delta, 0.5)[0], [2.5, 2.0, 1.0])
    np.testing.assert_allclose(adagrad_second_moment(v, delta)[0], [5.0, 4.0, 2.0])


def test_fedyogi_three_steps_by_hand():
    strategy = FedYogi(server_learning_rate=1.0, beta_1=0.5, beta_2=0.5, tau=1.0)  # v starts at 1
    # round 1, delta = 2: m = 1; v = 1 - 0.5*4*sign(1 - 4) = 3
    g1 = step(strategy, 1, w(0.0), w(2.0))
    np.testing.assert_allclose(g1[0], [1 / (math.sqrt(3) + 1)], rtol=1e-6)
    # round 2, delta = 1: m = 0.5 + 0.5 = 1; v = 3 - 0.5*1*sign(3 - 1) = 2.5 (Adam would give 2)
    g2 = step(strategy, 2, g1, [g1[0] + 1])
    np.testing.assert_allclose(g2[0], g1[0] + 1 / (math.sqrt(2.5) + 1), rtol=1e-6)
    # round 3, delta = 0: m = 0.5; v stays 2.5
    g3 = step(strategy, 3, g2, g2)
    np.testing.assert_allclose(g3[0], g2[0] + 0.5 / (math.sqrt(2.5) + 1), rtol=1e-6)


def test_server_state_belongs_to_the_instance():
    first, second = FedAdam(server_learning_rate=1.0, tau=1.0), FedAdam(server_learning_rate=1.0, tau=1.0)
    step(first, 1, w(0.0), w(5.0))
    np.testing.assert_array_equal(step(second, 1, w(0.0), w(5.0))[0], step(FedAdam(1.0, 1.0), 1, w(0.0), w(5.0))[0])


# --- robust strategies -----------------------------------------------------------------------------


def test_fedmedian_ignores_an_outlier_and_sample_counts():
    batch = updates(w(1.0, -1.0), w(2.0, -2.0), w(1000.0, 5.0), samples=[1, 1, 10_000])
    np.testing.assert_allclose(FedMedian().aggregate(1, w(0.0, 0.0), batch)[0], [2.0, -1.0])
    even = updates(w(1.0), w(2.0), w(3.0), w(1e6))
    np.testing.assert_allclose(FedMedian().aggregate(1, w(0.0), even)[0], [2.5])


def test_fedtrimmedavg_trims_the_extremes_of_each_coordinate():
    batch = updates(w(1.0, 50.0), w(2.0, -100.0), w(3.0, 3.0), w(4.0, 4.0), w(100.0, 5.0), samples=[9, 1, 1, 1, 1])
    # beta = 0.2 of 5 models: drop 1 at each end, per coordinate, unweighted
    np.testing.assert_allclose(FedTrimmedAvg(beta=0.2).aggregate(1, w(0.0, 0.0), batch)[0], [3.0, 4.0])
    # beta = 0: the plain unweighted mean
    np.testing.assert_allclose(FedTrimmedAvg(beta=0.0).aggregate(1, w(0.0, 0.0), batch)[0], [22.0, -38 / 5], rtol=1e-6)
    np.testing.assert_allclose(trimmed_mean([m.weights for m in batch], 0.0)[0], weighted_average([m.weights for m in batch], [1] * 5)[0], rtol=1e-6)


@pytest.mark.parametrize(
    "num_models, beta, cut", [(5, 0.2, 1), (4, 0.2, 0), (10, 0.2, 2), (10, 0.25, 2), (3, 0.49, 1), (2, 0.49, 0), (1, 0.4, 0)]
)
def test_trim_count_keeps_at_least_one_model(num_models, beta, cut):
    assert trim_count(num_models, beta) == cut
    assert num_models - 2 * cut >= 1


def test_robust_math_refuses_nothing_and_bad_beta():
    with pytest.raises(ValueError):
        coordinate_median([])
    with pytest.raises(ValueError):
        trimmed_mean([w(1.0)], 0.5)


def test_one_malicious_device_breaks_fedavg_but_not_median_or_trimmed_mean():
    rng = np.random.default_rng(0)
    honest = [[(1.0 + 0.01 * rng.standard_normal(shape)).astype(np.float32) for shape in [(4, 3), (3,)]] for _ in range(5)]
    malicious = [1000.0 * array for array in honest[0]]
    batch = updates(*honest, malicious)
    start = [np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]
    average = FedAvg().aggregate(1, start, batch)
    assert all(np.all(np.abs(array - 1.0) > 100) for array in average)
    for robust in (FedMedian(), FedTrimmedAvg(beta=0.2)):
        result = robust.aggregate(1, start, batch)
        assert all(np.all(np.abs(array - 1.0) < 0.1) for array in result), robust.name


# --- properties of every strategy -----------------------------------------------------------------


LINEAR = [name for name, cls in STRATEGIES.items() if cls.linear]
SMALL = {"fedavgm": {"server_learning_rate": 0.7, "server_momentum": 0.5}, "fedadam": {"server_learning_rate": 0.1}}


@pytest.mark.parametrize("name", LINEAR)
def test_linear_strategies_aggregate_through_the_weighted_mean(name):
    rng = np.random.default_rng(1)
    via_updates, via_mean = build_strategy(name, SMALL.get(name)), build_strategy(name, SMALL.get(name))
    weights_a = weights_b = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]
    for server_round in (1, 2, 3):
        models = [[(g + rng.normal(size=g.shape)).astype(np.float32) for g in weights_a] for _ in range(3)]
        batch = updates(*models, samples=[10, 20, 70])
        weights_a = via_updates.aggregate(server_round, weights_a, batch)
        weights_b = via_mean.from_mean(server_round, weights_b, weighted_average(models, [10, 20, 70]))
        for a, b in zip(weights_a, weights_b):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", [name for name, cls in STRATEGIES.items() if not cls.linear])
def test_robust_strategies_need_the_individual_updates(name):
    with pytest.raises(NotImplementedError):
        build_strategy(name).from_mean(1, w(0.0), w(1.0))


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_returns_float32_weights_shaped_like_the_model(name):
    rng = np.random.default_rng(2)
    weights = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32), np.zeros((), np.float32)]
    strategy = build_strategy(name)
    for server_round in (1, 2):
        # float64 from the devices; seven, enough for Bulyan's 4f+3 with its default f=1
        models = [[rng.normal(size=g.shape) for g in weights] for _ in range(7)]
        weights = strategy.aggregate(server_round, weights, updates(*models, samples=[1, 2, 3, 4, 5, 6, 7]))
        assert [a.shape for a in weights] == [(3, 2), (2,), ()]
        assert all(a.dtype == np.float32 and np.all(np.isfinite(a)) for a in weights)


# --- hyper-parameter validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("fedavgm", {"server_momentum": 1.0}, "fedavgm: server_momentum must be in [0, 1), got 1.0"),
        ("fedavgm", {"server_momentum": -0.1}, "server_momentum must be in [0, 1)"),
        ("fedavgm", {"server_learning_rate": 0}, "fedavgm: server_learning_rate must be > 0, got 0"),
        ("fedadam", {"tau": 0.0}, "fedadam: tau must be > 0"),
        ("fedyogi", {"beta_2": 1.0}, "fedyogi: beta_2 must be in [0, 1)"),
        ("fedadagrad", {"beta_1": 1.5}, "fedadagrad: beta_1 must be in [0, 1)"),
        ("fedprox", {"proximal_mu": -0.01}, "fedprox: proximal_mu must be >= 0, got -0.01"),
        ("fedtrimmedavg", {"beta": 0.5}, "fedtrimmedavg: beta must be in [0, 0.5), got 0.5"),
        ("fedadam", {"tau": float("nan")}, "fedadam: tau must be a finite number"),
        ("fedadam", {"tau": "0.1"}, "fedadam: tau must be a finite number, got '0.1'"),
        ("fedadam", {"beta_1": True}, "fedadam: beta_1 must be a finite number"),
        ("fedadagrad", {"beta_2": 0.9}, "fedadagrad has no parameter beta_2; its parameters: server_learning_rate, tau, beta_1"),
        ("fedavg", {"mu": 1}, "fedavg has no parameter mu; its parameters: none"),
    ],
)
def test_bad_parameters_are_explained(name, params, message):
    problems = strategy_problems(name, params)
    assert len(problems) == 1 and message in problems[0]
    with pytest.raises(ValueError, match=re.escape(message)):
        build_strategy(name, params)


def test_every_problem_is_reported_at_once():
    problems = strategy_problems("fedadam", {"tau": -1, "beta_1": 1, "lr": 0.1})
    assert len(problems) == 3
    with pytest.raises(ValueError, match="lr.*tau.*beta_1"):
        build_strategy("fedadam", {"tau": -1, "beta_1": 1, "lr": 0.1})


def test_unknown_strategy_lists_the_known_ones():
    assert strategy_problems("fedsgd") == [
        "unknown strategy 'fedsgd'; choose one of fedavg, fedavgm, fedprox, fedadagrad, fedadam, fedyogi, fedmedian, "
        "fedtrimmedavg, krum, multikrum, bulyan, qfedavg, fednova, scaffold, fedbuff"
    ]
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'; choose one of fedavg, fedavgm"):
        build_strategy("fedsgd")
    with pytest.raises(KeyError):  # still a KeyError, as before
        build_strategy("fedsgd")


def test_good_parameters_pass_and_are_used():
    assert strategy_problems("fedadam", {"server_learning_rate": 0.03, "tau": 1e-2}) == []
    assert strategy_problems("fedtrimmedavg", {"beta": 0}) == []
    assert strategy_problems("fedavgm", None) == []
    strategy = build_strategy("fedyogi", {"beta_2": 0.9, "server_learning_rate": np.float64(0.02)})
    assert (strategy.beta_2, strategy.server_learning_rate, strategy.tau) == (0.9, 0.02, 1e-3)


def test_constructing_directly_also_validates():
    with pytest.raises(ValueError, match="server_momentum"):
        FedAvgM(server_momentum=1.2)
