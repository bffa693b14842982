"""What every federation backend (in-process, Flower) shares: device activation and waiting for the run."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

from engine.results import Snapshot


class FederationBackend(ABC):
    """Activation flags and the run thread, behind the API the dashboard and CLI drive.

    Subclasses set ``devices``, ``training_note``, ``_lock``, ``_active`` (one flag per device) and
    ``_thread``, and say in :meth:`_activity_changed` how the next round learns
    of a change.
    """

    devices: list
    training_note: str  # one line on how devices train, e.g. vectorised stacks or one process each
    _lock: threading.Lock
    _active: list[bool]
    _thread: threading.Thread | None

    @abstractmethod
    def snapshot(self) -> Snapshot: ...

    @abstractmethod
    def _activity_changed(self) -> None:
        """Make the activation flags visible to the next round's selection."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def run_to_end(self) -> Snapshot:
        """Start, wait until the run ends, release the workers: the final snapshot (scripts, benchmarks)."""
        try:
            self.start()
            return self.wait()
        finally:
            self.close()

    def wait(self, timeout: float | None = None) -> Snapshot:
        """Block until the run thread ends (finished, stopped or failed), then return a snapshot."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    def set_active(self, device_id: int, active: bool) -> None:
        """Activate or deactivate a device; takes effect from the next round."""
        if not 0 <= device_id < len(self.devices):
            raise IndexError(f"no device {device_id}")
        with self._lock:
            self._active[device_id] = bool(active)
        self._activity_changed()

    def set_all_active(self, active: bool) -> None:
        with self._lock:
            self._active = [bool(active)] * len(self.devices)
        self._activity_changed()
