"""Pause and stop signals shared by the round loop and the devices' checkpoints."""

from __future__ import annotations

import threading

from devices.trainer import TrainingStopped


class RunControl:
    """Thread-safe pause/stop flags; ``checkpoint`` blocks while paused and raises once stopped."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._paused = False
        self._stopped = False

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _set(self, paused: bool | None = None, stopped: bool | None = None) -> None:
        with self._changed:
            self._paused = self._paused if paused is None else paused
            self._stopped = self._stopped if stopped is None else stopped
            self._changed.notify_all()

    def pause(self) -> None:
        self._set(paused=True)

    def resume(self) -> None:
        self._set(paused=False)

    def stop(self) -> None:
        self._set(stopped=True)

    def poke(self) -> None:
        """Wake anything waiting (e.g. a device was activated)."""
        self._set()

    def checkpoint(self, _steps_done: int = 0) -> None:
        with self._changed:
            while self._paused and not self._stopped:
                self._changed.wait()
            if self._stopped:
                raise TrainingStopped()

    def wait(self, timeout: float) -> None:
        """Sleep until something changes or ``timeout`` passes."""
        with self._changed:
            self._changed.wait(timeout)
