"""The strategy interface: how the server turns device updates into the next global model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from devices.messages import DeviceUpdate, Weights


class Strategy(ABC):
    """One aggregation algorithm. Subclasses keep any server-side state they need.

    The round loop calls :meth:`aggregate` once per round with the valid updates
    only; invalid ones have already been rejected and reported.
    """

    name: str = "strategy"

    @abstractmethod
    def aggregate(self, server_round: int, global_weights: Weights, updates: Sequence[DeviceUpdate]) -> Weights:
        """Return the new global weights."""
