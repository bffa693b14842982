"""Scratch folders of the Flower processes this process starts: removed when they end, at exit, or later.

A federation on Flower (``flower_app.backend.loopback_transport``,
``flower_app.deployment.deployment_transport``) keeps its SuperLink's and
SuperNodes' homes, logs and secrets in a folder under the temporary directory.
:func:`scratch_folder` makes one and removes it three ways, so that none piles up:

* when the federation closes (:meth:`ScratchFolder.remove`, called once its processes have ended);
* when this process exits without closing it (``atexit``);
* when this process was killed outright (SIGKILL: nothing of it runs any more): the
  next :func:`scratch_folder` of the same prefix removes folders whose owner (the
  pid in ``owner.pid``) is dead. A folder without that file is never touched.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

OWNER_FILE = "owner.pid"


@dataclass(frozen=True)
class ScratchFolder:
    """A folder this process owns; :meth:`remove` deletes it (idempotent) and drops its ``atexit`` removal."""

    path: Path
    at_exit: Callable[[], None]

    def remove(self) -> None:
        atexit.unregister(self.at_exit)
        shutil.rmtree(self.path, ignore_errors=True)


def scratch_folder(prefix: str, root: str | Path | None = None) -> ScratchFolder:
    """A new folder ``root``/``prefix``* (default root: the temporary directory), removed at exit at the latest.

    Folders of the same prefix left by dead processes are removed first (:func:`sweep`).
    """
    root = Path(root or tempfile.gettempdir())
    sweep(prefix, root)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root)).resolve()
    (path / OWNER_FILE).write_text(str(os.getpid()))
    at_exit = functools.partial(shutil.rmtree, path, ignore_errors=True)  # its own object: unregistered alone
    atexit.register(at_exit)
    return ScratchFolder(path, at_exit)


def owner_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user's counts: it is not ours to judge)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(prefix: str, root: str | Path | None = None) -> list[Path]:
    """Remove ``root``/``prefix``* folders whose ``owner.pid`` names a dead process; the folders removed."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            owner = int((folder / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not made by scratch_folder, not readable, or being made right now
        if not owner_alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
