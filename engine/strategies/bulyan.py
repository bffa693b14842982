"""Bulyan: Krum selection, then a coordinate-wise trimmed mean around the median (El Mhamdi et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from devices.messages import Weights
from engine.robust import bulyan, bulyan_minimum
from engine.strategies.krum import Krum


@dataclass
class Bulyan(Krum):
    """Bulyan (El Mhamdi, Guerraoui & Rouault 2018, "The Hidden Vulnerability of Distributed Learning in
    Byzantium", ICML).

    Krum picks ``theta = n - 2f`` models one after another (each pick leaves the pool); then, per weight, the
    mean of the ``beta = theta - 2f`` picked values closest to their median is taken. Needs ``n >= 4f + 3``.
    Unlike Krum no single weight can be pulled far by a model that is close overall but bad in a few weights.
    """

    name = "bulyan"
    title = "Bulyan"
    summary = "Krum-selects n-2f models, then averages each weight's values nearest the median: needs n >= 4f+3."

    condition = "at least 4f+3"

    def minimum_updates(self) -> int:
        return bulyan_minimum(self.malicious)

    def combine(self, models: list[Weights]) -> tuple[Weights, list[int]]:
        return bulyan(models, self.malicious)
