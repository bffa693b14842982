"""Krum and Multi-Krum: keep the models closest to their neighbours (Blanchard et al. 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from devices.messages import DeviceUpdate, Weights
from engine.aggregation import as_float32
from engine.robust import krum_minimum, multi_krum
from engine.strategies.base import NON_NEGATIVE, AggregationSkipped, Strategy, hyperparameter


@dataclass
class Krum(Strategy):
    """Krum (Blanchard, El Mhamdi, Guerraoui & Stainer 2017, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent", NeurIPS).

    Each model's score is the sum of its squared distances to its ``n - f - 2`` nearest other models; the
    model with the lowest score becomes the global model. Tolerates ``f`` arbitrary (Byzantine) devices when
    ``n > 2f + 2``. Unweighted: sample counts are ignored, a malicious device could inflate its own.
    """

    name = "krum"
    title = "Krum"
    summary = "Keeps the one model closest to its neighbours: tolerates f malicious devices out of more than 2f+2."
    linear = False

    f: float = hyperparameter(1, "assumed malicious devices per round", NON_NEGATIVE, integer=True)

    @property
    def malicious(self) -> int:
        return int(self.f)

    condition: ClassVar[str] = "more than 2f+2"  # the paper's condition on n, in words

    def selected_count(self, num_updates: int) -> int:
        """How many of the best-scored models are averaged (Krum: one)."""
        return 1

    def minimum_updates(self) -> int:
        return krum_minimum(self.malicious)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kept: tuple[int, ...] | None = None  # the devices whose models the last aggregate used

    def kept_devices(self) -> tuple[int, ...] | None:
        return self.kept

    def combine(self, models: list[Weights]) -> tuple[Weights, list[int]]:
        """The robust aggregate of at least :meth:`minimum_updates` models, and the positions of those it kept."""
        return multi_krum(models, self.malicious, self.selected_count(len(models)))

    def device_problems(self, devices_per_round: int) -> list[str]:
        need = self.minimum_updates()
        if devices_per_round >= need:
            return []
        return [f"{self.name} with f={self.malicious} needs {self.condition}, i.e. at least {need} devices per "
                f"round; this configuration trains {devices_per_round} (add devices or lower f)"]

    def aggregate(self, server_round: int, global_weights: Weights, updates: Sequence[DeviceUpdate]) -> Weights:
        need = self.minimum_updates()
        if len(updates) < need:
            raise AggregationSkipped(f"{self.name} with f={self.malicious} needs at least {need} updates, "
                                     f"{len(updates)} arrived; the global model is unchanged")
        model, positions = self.combine([u.weights for u in updates])
        self.kept = tuple(sorted(updates[i].device_id for i in positions))
        return as_float32(model)


@dataclass
class MultiKrum(Krum):
    """Multi-Krum (Blanchard et al. 2017, Section 4): the unweighted mean of the ``m`` models with the best
    Krum scores; ``m = 1`` is Krum, and ``m = 0`` (the default) takes ``n - f``, as the paper suggests."""

    name = "multikrum"
    title = "Multi-Krum"
    summary = "Averages the m models closest to their neighbours: robust like Krum, less noisy."

    m: float = hyperparameter(0, "models averaged (0: n - f)", NON_NEGATIVE, integer=True)

    def selected_count(self, num_updates: int) -> int:
        return min(int(self.m), num_updates) if self.m else num_updates - self.malicious
