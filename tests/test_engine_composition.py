"""Every strategy x privacy mode that validation accepts runs a round; the others are refused with a reason."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from devices.pool import WorkerPool
from devices.trainer import ModelReplica, OptimizerSpec
from engine.config import FederationConfig
from engine.models import ModelRegistry
from engine.async_rounds import AsyncRoundRunner
from engine.rounds import RoundRunner
from engine.setup import build_devices, server_test_set
from engine.strategies import STRATEGIES, build_strategy
from engine.transport import InProcessTransport

PRIVACY_MODES = {
    "none": {},
    "clipping": {"clip_norm": 1.0},
    "local DP": {"clip_norm": 1.0, "local_noise_multiplier": 0.5},
    "central DP": {"clip_norm": 1.0, "noise_multiplier": 0.5},
    "secure aggregation": {"secure_aggregation": True},
    "secure aggregation, central DP": {"secure_aggregation": True, "clip_norm": 1.0, "noise_multiplier": 0.5},
    "secure aggregation, local and central DP": {"secure_aggregation": True, "clip_norm": 1.0,
                                                 "noise_multiplier": 0.5, "local_noise_multiplier": 0.5},
}
BASE = dict(model="mlp", num_devices=7, train_samples=350, test_samples=60, rounds=1, batch_size=32)  # Bulyan, f=1: 7
DEVICES = list(range(BASE["num_devices"]))
NEEDS_SGD = ("scaffold",)  # its control variates assume plain SGD steps


@pytest.fixture(scope="module")
def bench(fashion):
    """One set of devices, one worker and one evaluator, shared by every combination (each gets a fresh runner)."""
    config = FederationConfig(**BASE)
    build = partial(ModelRegistry().build, "mlp", fashion.image_shape, fashion.num_classes)
    make_replica = partial(ModelReplica, build, OptimizerSpec(config.optimizer, config.momentum))
    pool = WorkerPool(make_replica, 1)
    evaluator = make_replica()
    yield build_devices(fashion, config), pool, evaluator, server_test_set(fashion, config)
    pool.shutdown()


def needs_a_mean(mode: dict) -> bool:
    return mode.get("secure_aggregation", False) or mode.get("noise_multiplier", 0) > 0


def test_every_accepted_strategy_and_privacy_combination_runs_a_round(bench):
    devices, pool, evaluator, test_set = bench
    start = evaluator.get_weights()
    ran, refused = [], []
    for name, strategy_class in STRATEGIES.items():
        for mode_name, mode in PRIVACY_MODES.items():
            optimizer = "sgd" if name in NEEDS_SGD else "adam"
            config = FederationConfig(**BASE, strategy=name, optimizer=optimizer, **mode)
            problems = config.problems()
            if not strategy_class.linear and needs_a_mean(mode):
                assert problems, f"{name} with {mode_name} cannot run but was accepted"
                assert all(name in p and ("secure aggregation" in p or "central DP" in p) for p in problems)
                refused.append((name, mode_name))
                continue
            assert problems == [], (name, mode_name, problems)
            transport = InProcessTransport(devices, pool, config.stack_width, lambda device, steps: None)
            strategy = build_strategy(name)
            strategy.bind(len(devices))
            runner_class = AsyncRoundRunner if strategy.asynchronous else RoundRunner  # fedbuff: one server step
            runner = runner_class(config, transport, evaluator, strategy, test_set,
                                  lambda device, status, detail: None)
            weights, result = runner.run(1, start, DEVICES, lambda steps: None)
            context = (name, mode_name, result.problems)
            expected = int(strategy.buffer_size) if strategy.asynchronous else len(DEVICES)
            assert len(result.devices) == expected and result.problems == (), context
            assert all(np.all(np.isfinite(w)) and w.shape == s.shape for w, s in zip(weights, start)), context
            assert not all(np.array_equal(w, s) for w, s in zip(weights, start)), context
            noisy = mode.get("noise_multiplier", 0) > 0 or mode.get("local_noise_multiplier", 0) > 0
            assert (result.epsilon is not None) == noisy, context
            ran.append((name, mode_name))
    nonlinear = sum(not cls.linear for cls in STRATEGIES.values())
    assert nonlinear >= 2 and len(refused) == nonlinear * 4  # the rules that need each update, under a mean-only mode
    assert len(ran) == len(STRATEGIES) * len(PRIVACY_MODES) - len(refused)
