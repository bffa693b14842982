"""Pure helpers of the setup panel: which devices are slow or malicious, strategy parameter values."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from engine.settings import Kind, declared_settings, kinds

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


# Widget keys are ``setup_<field name>``, except these (kept: tests and recorded sessions use them).
WIDGET_KEYS = {
    "num_devices": "setup_devices", "shards_per_device": "setup_shards", "round_deadline": "setup_deadline",
    "clip_norm": "setup_clip", "noise_multiplier": "setup_noise", "local_noise_multiplier": "setup_local_noise",
    "dp_delta": "setup_delta", "secure_aggregation": "setup_secure", "topk_fraction": "setup_topk",
}


def widget_key(name: str) -> str:
    return WIDGET_KEYS.get(name, f"setup_{name}")


def plain_widget_value(kind: Kind, value: object) -> object:
    """What a generated widget shows for ``value``: 0 for an unset count, "" for unset text, a mapping or
    list as its text (``2=nan,3=crash``)."""
    if value is None:
        return 0 if kind.zero_is_none else ""
    return kind.plain(value) if kind.collection else value


def _rounds_values(config, _) -> dict[str, object]:
    return {"setup_until_stopped": config.rounds is None,
            **({} if config.rounds is None else {"setup_rounds": config.rounds})}


def _optional_values(name: str, switch: str):
    """An optional number behind a checkbox (``switch``): the checkbox, and the number when set."""
    def values(config, _) -> dict[str, object]:
        value = getattr(config, name)
        return {switch: value is not None, **({} if value is None else {widget_key(name): value})}
    return values


def _strategy_param_values(config, strategy_parameters: Mapping[str, float]) -> dict[str, object]:
    return {f"setup_{config.strategy}_{name}": float(config.strategy_params.get(name, default))
            for name, default in strategy_parameters.items()}


def fault_widget_values(config, _=None) -> dict[str, object]:
    """The malicious / NaN / crash pickers' values for ``config.faults``."""
    values: dict[str, object] = {
        "setup_nan": [d for d, f in sorted(config.faults.items()) if f == "nan"],
        "setup_crash": [d for d, f in sorted(config.faults.items()) if f == "crash"],
    }
    others = {d: f for d, f in config.faults.items() if f not in ("nan", "crash")}
    values["setup_bad_count"] = len(others)
    if others:
        values["setup_bad_kind"] = next(iter(others.values()))
    return values


def slowdown_widget_values(config, _=None) -> dict[str, object]:
    """The slow-device pickers' values for ``config.slowdowns``."""
    slow = sorted(int(k) for k in config.slowdowns)
    values: dict[str, object] = {"setup_slow_count": len(slow)}
    if slow:
        values["setup_slow_factor"] = float(next(iter(config.slowdowns.values())))
        values["setup_slow_mode"] = "first" if slow == list(range(len(slow))) else "random"
    return values


# Fields whose widgets are not one plain widget per field (see app/sidebar.py): how they show a config.
SPECIAL_VALUES = {
    "rounds": _rounds_values,
    "round_deadline": _optional_values("round_deadline", "setup_use_deadline"),
    "clip_norm": _optional_values("clip_norm", "setup_dp"),
    "strategy_params": _strategy_param_values,
    "faults": fault_widget_values,
    "slowdowns": slowdown_widget_values,
}


def widget_values(config, strategy_parameters: Mapping[str, float]) -> dict[str, object]:
    """Setup-panel widget values (by key) that describe ``config``, e.g. after reopening a recorded run.

    Generated from the declared settings: one value per plain widget, the special
    fields through :data:`SPECIAL_VALUES`. Exact for everything except unusual
    slow/malicious device sets, which are approximated.
    """
    values: dict[str, object] = {}
    config_kinds = kinds(type(config))
    for f, _ in declared_settings(type(config)):
        special = SPECIAL_VALUES.get(f.name)
        if special is not None:
            values.update(special(config, strategy_parameters))
        else:
            values[widget_key(f.name)] = plain_widget_value(config_kinds[f.name], getattr(config, f.name))
    return values
