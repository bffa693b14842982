"""Aggregation strategies, one class per algorithm, looked up by name."""

from __future__ import annotations

from engine.strategies.base import Strategy
from engine.strategies.fedavg import FedAvg

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg}


def build_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise KeyError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()


__all__ = ["STRATEGIES", "Strategy", "FedAvg", "build_strategy"]
