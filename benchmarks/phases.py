"""Where a round's time goes: wall-clock seconds per phase, summed over the threads that ran it.

:func:`timed_phases` wraps the methods that make up a round (stack or replica
training and evaluation, weight loading, optimizer resets, update encoding,
the server's aggregation and evaluation) with timers for the benchmark's own
process, and gives back the totals. Worker-side phases run on several
threads at once, so their sum can exceed the round's wall-clock time.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

PHASES = {
    "devices.stacked.StackedReplica": {"train": "device train", "evaluate": "device evaluate",
                                       "load": "device load+reset", "reset_optimizer": "device load+reset",
                                       "get_weights": "device get weights"},
    "devices.trainer.ModelReplica": {"train": "device train", "set_weights": "device load+reset",
                                     "reset_optimizer": "device load+reset", "get_weights": "device get weights"},
    "devices.device.Device": {"encode": "device encode"},
    "engine.rounds.RoundRunner": {"aggregate_plain": "server decode+aggregate", "evaluate": "server evaluate",
                                  "collect": "round collect (wall)"},
}


class PhaseLog:
    """Timed calls, ``(phase, started, ended)``, and each round's window, to attribute the calls to rounds."""

    def __init__(self):
        self.calls: list[tuple[str, float, float]] = []
        self.rounds: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def add(self, phase: str, started: float, ended: float) -> None:
        with self._lock:
            self.calls.append((phase, started, ended))

    def of_round(self, server_round: int) -> dict[str, float]:
        """Seconds per phase of the calls that started during round ``server_round``."""
        begin, end = self.rounds[server_round]
        totals: dict[str, float] = defaultdict(float)
        for phase, started, ended in self.calls:
            if begin <= started <= end:
                totals[phase] += ended - started
        return dict(totals)


@contextmanager
def timed_phases() -> Iterator[PhaseLog]:
    """Time the rounds' phases while the block runs (``ModelReplica.evaluate`` is also the server's
    evaluation, so it is timed through ``RoundRunner.evaluate`` only)."""
    import importlib

    from engine.rounds import RoundRunner

    log = PhaseLog()
    originals = []
    for path, methods in PHASES.items():
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        for method, phase in methods.items():
            original = getattr(cls, method)
            originals.append((cls, method, original))
            setattr(cls, method, _timed(original, phase, log))
    run = RoundRunner.run
    originals.append((RoundRunner, "run", run))

    def timed_run(self, server_round, *args, **kwargs):
        started = time.perf_counter()
        try:
            return run(self, server_round, *args, **kwargs)
        finally:
            log.rounds[server_round] = (started, time.perf_counter())

    RoundRunner.run = timed_run
    try:
        yield log
    finally:
        for cls, method, original in originals:
            setattr(cls, method, original)


def _timed(function, phase: str, log: PhaseLog):
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            log.add(phase, started, time.perf_counter())

    return timed
