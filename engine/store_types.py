"""What the run store hands out and raises: run summaries, checkpoints, and its errors.

Apart from ``engine.store`` so that code which only names these types (the
CLI's messages, the dashboard's run list) reads them without the store's
SQLite and file handling.
"""

from __future__ import annotations

from dataclasses import dataclass

from devices.messages import Weights
from engine.errors import UserError


def short_id(run_id: str) -> str:
    """The random tail of a run id (``e027c4`` of ``20261201-083830-e027c4``): tells runs of one day apart."""
    return run_id.rsplit("-", 1)[-1]


class StoreError(UserError):
    """The runs folder or its index cannot be used; the message says why and what to do."""


class RunNotFound(StoreError, KeyError):
    """No run with that id in the store."""


class RunBusy(StoreError):
    """The run is being trained by an open federation (this or another process)."""


class CheckpointError(StoreError, FileNotFoundError):
    """No usable checkpoint for the round asked for."""


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    created: str
    label: str
    dataset: str
    model: str
    strategy: str
    partition: str
    num_devices: int
    status: str
    rounds: int
    final_accuracy: float | None
    best_accuracy: float | None
    best_round: int | None
    private: bool


@dataclass(frozen=True)
class Checkpoint:
    round: int
    weights: Weights
    strategy_state: dict[str, Weights]
    note: str = ""  # set when an unreadable or missing newer checkpoint was skipped: say so to the user
