"""Pure helpers of the setup panel: which devices are slow or malicious, strategy parameter values."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

PICK_MODES = ("first", "random")
MALICIOUS_KINDS = ("scale", "random", "crash", "nan")


def pick_devices(num_devices: int, count: int, mode: str = "first", seed: int = 0) -> list[int]:
    """``count`` device ids: the first ones, or a seeded random choice (same seed, same devices)."""
    count = max(0, min(int(count), int(num_devices)))
    if mode == "random":
        return sorted(int(d) for d in np.random.default_rng(seed).choice(num_devices, size=count, replace=False))
    return list(range(count))


def slowdowns_for(num_devices: int, count: int, factor: float, mode: str = "first", seed: int = 0) -> dict[int, float]:
    """Slowdown ``factor`` for ``count`` devices (none when the factor is 1)."""
    if factor == 1.0:
        return {}
    return {d: float(factor) for d in pick_devices(num_devices, count, mode, seed)}


def faults_for(num_devices: int, count: int, kind: str) -> dict[int, str]:
    """``kind`` of misbehaviour for the last ``count`` devices (slow devices are picked from the first ones)."""
    count = max(0, min(int(count), int(num_devices)))
    return {d: kind for d in range(num_devices - count, num_devices)}


def strategy_values(defaults: Mapping[str, float], chosen: Mapping[str, float]) -> dict[str, float]:
    """Only the hyper-parameters that differ from the strategy's defaults (what FederationConfig stores)."""
    return {name: float(chosen[name]) for name, default in defaults.items()
            if name in chosen and float(chosen[name]) != float(default)}


def _float_dict_keys(mapping: Mapping[int, object]) -> list[int]:
    return sorted(int(k) for k in mapping)


def widget_values(config, strategy_parameters: Mapping[str, float]) -> dict[str, object]:
    """Setup-panel widget values (by key) that describe ``config``, e.g. after reopening a recorded run.

    Exact for everything except unusual slow/malicious device sets, which are approximated.
    """
    values: dict[str, object] = {
        "setup_dataset": config.dataset, "setup_train_samples": config.train_samples or 0,
        "setup_devices": config.num_devices, "setup_partition": config.partition, "setup_alpha": config.alpha,
        "setup_shards": config.shards_per_device, "setup_quantity_alpha": config.quantity_alpha,
        "setup_model": config.model, "setup_until_stopped": config.rounds is None,
        "setup_local_epochs": config.local_epochs, "setup_batch_size": config.batch_size,
        "setup_learning_rate": config.learning_rate, "setup_optimizer": config.optimizer,
        "setup_momentum": config.momentum, "setup_min_devices": config.min_devices, "setup_fraction": config.fraction,
        "setup_seed": config.seed, "setup_data_dir": config.data_dir or "",
        "setup_test_samples": config.test_samples or 0, "setup_workers": config.workers,
        "setup_stack_width": config.stack_width, "setup_xla": config.xla,
        "setup_strategy": config.strategy, "setup_dropout": config.dropout,
        "setup_use_deadline": config.round_deadline is not None, "setup_dp": config.clip_norm is not None,
        "setup_noise": config.noise_multiplier, "setup_local_noise": config.local_noise_multiplier,
        "setup_delta": config.dp_delta, "setup_secure": config.secure_aggregation,
        "setup_compression": config.compression, "setup_topk": config.topk_fraction,
    }
    if config.rounds is not None:
        values["setup_rounds"] = config.rounds
    if config.round_deadline is not None:
        values["setup_deadline"] = config.round_deadline
    if config.clip_norm is not None:
        values["setup_clip"] = config.clip_norm
    for name, default in strategy_parameters.items():
        values[f"setup_{config.strategy}_{name}"] = float(config.strategy_params.get(name, default))
    values["setup_nan"] = [d for d, f in sorted(config.faults.items()) if f == "nan"]
    values["setup_crash"] = [d for d, f in sorted(config.faults.items()) if f == "crash"]
    others = {d: f for d, f in config.faults.items() if f not in ("nan", "crash")}
    values["setup_bad_count"] = len(others)
    if others:
        values["setup_bad_kind"] = next(iter(others.values()))
    slow = _float_dict_keys(config.slowdowns)
    values["setup_slow_count"] = len(slow)
    if slow:
        values["setup_slow_factor"] = float(next(iter(config.slowdowns.values())))
        values["setup_slow_mode"] = "first" if slow == list(range(len(slow))) else "random"
    return values
