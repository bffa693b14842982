"""The devices' learning rate across rounds (engine.lr_schedule), and that the round runner sends it."""

import math

import pytest

from engine.config import FederationConfig
from engine.lr_schedule import round_factor, round_learning_rate
from engine.rounds import local_training_instructions
from engine.strategies import build_strategy


def test_constant_schedule_keeps_the_rate():
    assert [round_factor("constant", r, 5) for r in range(1, 8)] == [1.0] * 7


def test_cosine_schedule_decays_over_the_planned_rounds_then_holds():
    factors = [round_factor("cosine", r, 5) for r in range(1, 8)]
    expected = [(1 + math.cos(math.pi * k / 5)) / 2 for k in range(5)]
    assert factors[:5] == pytest.approx(expected)
    assert factors[:5] == pytest.approx([1.0, 0.9045085, 0.6545085, 0.3454915, 0.0954915])
    assert factors[5:] == [factors[4]] * 2  # a run extended past its rounds stays at the last rate
    assert round_factor("cosine", 1, 1) == 1.0


def test_cosine_without_a_planned_end_is_constant():
    assert round_factor("cosine", 40, None) == 1.0


def test_bad_schedule_or_round_is_refused_with_what_is_allowed():
    with pytest.raises(ValueError, match="constant, cosine.*'linear'"):
        round_factor("linear", 1, 5)
    with pytest.raises(ValueError, match="from 1"):
        round_factor("cosine", 0, 5)


def test_round_runner_sends_each_round_its_scheduled_rate():
    config = FederationConfig(learning_rate=0.004, lr_schedule="cosine", rounds=4)
    rates = [local_training_instructions(config, build_strategy("fedavg"), r, 0, []).learning_rate
             for r in (1, 2, 3, 4)]
    assert rates == pytest.approx([round_learning_rate(0.004, "cosine", r, 4) for r in (1, 2, 3, 4)])
    assert rates[0] == 0.004 and rates[-1] == pytest.approx(0.004 * (1 + math.cos(3 * math.pi / 4)) / 2)
    constant = config.with_changes(lr_schedule="constant")
    assert local_training_instructions(constant, build_strategy("fedavg"), 3, 0, []).learning_rate == 0.004


def test_unknown_schedule_is_a_config_problem():
    problems = FederationConfig(lr_schedule="step").problems()
    assert any("lr_schedule" in p or "schedule" in p.lower() for p in problems), problems
