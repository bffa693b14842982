"""Aggregation strategies, one class per algorithm, looked up by name."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from engine.strategies.base import AggregationSkipped, LocalOptions, Strategy
from engine.strategies.bulyan import Bulyan
from engine.strategies.fedavg import FedAvg
from engine.strategies.fedavgm import FedAvgM
from engine.strategies.fedbuff import FedBuff
from engine.strategies.fedmedian import FedMedian
from engine.strategies.fednova import FedNova
from engine.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from engine.strategies.fedprox import FedProx
from engine.strategies.fedtrimmedavg import FedTrimmedAvg
from engine.strategies.krum import Krum, MultiKrum
from engine.strategies.qfedavg import QFedAvg
from engine.strategies.scaffold import Scaffold

STRATEGIES: Mapping[str, type[Strategy]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (
            FedAvg, FedAvgM, FedProx, FedAdagrad, FedAdam, FedYogi, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan,
            QFedAvg, FedNova, Scaffold, FedBuff,
        )
    }
)


class UnknownStrategyError(ValueError, KeyError):
    """No strategy has that name. A ``ValueError``; also a ``KeyError`` for callers written against the old API."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _unknown_strategy(name: str) -> str:
    return f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}"


def strategy_problems(name: str, params: Mapping[str, object] | None = None) -> list[str]:
    """Why ``build_strategy(name, params)`` would fail, one message per problem; [] if it would succeed."""
    if name not in STRATEGIES:
        return [_unknown_strategy(name)]
    return STRATEGIES[name].parameter_problems(dict(params or {}))


def strategy_device_problems(name: str, params: Mapping[str, object] | None, devices_per_round: int) -> list[str]:
    """Why strategy ``name`` cannot work with ``devices_per_round`` updates a round (e.g. Krum's n > 2f+2).

    [] when it can, and also when the name or parameters are wrong (:func:`strategy_problems` says why).
    """
    if strategy_problems(name, params):
        return []
    return build_strategy(name, params).device_problems(devices_per_round)


def build_strategy(name: str, params: Mapping[str, float] | None = None) -> Strategy:
    """Instantiate strategy ``name`` with hyper-parameters ``params`` (others keep their defaults).

    Raises ``ValueError`` naming every problem: an unknown strategy (listing the known ones), unknown
    parameters (listing the strategy's own), or values outside their allowed ranges.
    """
    if name not in STRATEGIES:
        raise UnknownStrategyError(_unknown_strategy(name))
    problems = strategy_problems(name, params)
    if problems:
        raise ValueError("; ".join(problems))
    return STRATEGIES[name](**dict(params or {}))


__all__ = [
    "STRATEGIES",
    "AggregationSkipped",
    "Bulyan",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedMedian",
    "FedNova",
    "FedOpt",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "Krum",
    "MultiKrum",
    "QFedAvg",
    "Scaffold",
    "LocalOptions",
    "Strategy",
    "UnknownStrategyError",
    "build_strategy",
    "strategy_device_problems",
    "strategy_problems",
]
