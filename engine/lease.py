"""Which runs are training right now: an advisory file lock held by the training process.

The process training a run holds an exclusive ``flock`` on ``<run>/.lease``
for as long as its round loop runs. The kernel drops the lock when that
process ends in any way, ``kill -9`` included, so "status running but nobody
holds the lease" means the run was interrupted. ``flock`` locks belong to an
open file, so two federations in one process (two dashboard tabs) exclude each
other too.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LEASE_NAME = ".lease"


class LeaseHeld(Exception):
    """Another open federation (in this or another process) is training the run."""


class RunLease:
    """The exclusive right to train one run; release it (or let the process end) to give it up."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(run_dir / LEASE_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise LeaseHeld(str(run_dir)) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the lock
            self._fd = None


def is_leased(run_dir: Path) -> bool:
    """Whether some open federation holds the run's lease (it is training or paused mid-run)."""
    try:
        fd = os.open(run_dir / LEASE_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def holder_pid(run_dir: Path) -> str:
    """The process id written by the lease holder ('' if unknown), for messages."""
    try:
        return (run_dir / LEASE_NAME).read_text().strip()
    except OSError:
        return ""
