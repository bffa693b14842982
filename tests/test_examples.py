"""The experiment files under examples/ stay readable and valid as the configuration evolves."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.experiments import load_config

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_each_example_config_loads_and_is_valid(path):
    assert load_config(path).problems() == []


def test_the_dirichlet_preset_is_the_issue_target_configuration():
    config = load_config(next(p for p in EXAMPLES if p.name == "dirichlet-0.1.toml"))
    assert (config.num_devices, config.partition, config.alpha, config.rounds, config.local_epochs) == (
        10, "dirichlet", 0.1, 10, 2)
