"""The files of one run's folder: atomic writes, checkpoints and device state as ``.npz`` archives.

Plain functions on paths, so the run store (``engine.store``) keeps only the index and the bookkeeping.
Every write goes to a temporary file that is fsynced and renamed into place, so a process killed at any
moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from devices.messages import Weights

PREPROCESSING_FILE = "preprocessing.json"
"""In a run's folder: how its data was prepared (``data.spec.Preprocessing``), for exports and predictions."""

CHECKPOINT_NAME = re.compile(r"round-(\d{5,})\.npz")
"""The store's own checkpoint file names; anything else in a run folder (copies, notes) is ignored."""


def round_file(folder: Path, server_round: int) -> Path:
    """Where a folder keeps round ``server_round``'s archive (``round-00012.npz``)."""
    return folder / f"round-{server_round:05d}.npz"


def atomic_write(path: Path, write) -> None:
    """Write through ``write(handle)`` to a temporary file, fsync it, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def rounds_in(folder: Path) -> list[int]:
    """Rounds that have an archive in ``folder`` under the store's own naming, oldest first."""
    if not folder.is_dir():
        return []
    matches = (CHECKPOINT_NAME.fullmatch(path.name) for path in folder.iterdir())
    return sorted(int(match.group(1)) for match in matches if match)


def write_checkpoint(path: Path, weights: Weights, state: dict[str, Weights]) -> None:
    """The global model and the strategy's state (e.g. server momentum) in one archive."""
    arrays = {f"weight_{i:04d}": w for i, w in enumerate(weights)}
    for name, tensors in state.items():
        arrays.update({f"state_{name}_{i:04d}": t for i, t in enumerate(tensors)})
    atomic_write(path, lambda h: np.savez(h, **arrays))


def read_checkpoint(path: Path) -> tuple[Weights, dict[str, Weights]]:
    """What :func:`write_checkpoint` wrote: (weights, strategy state). Raises whatever a damaged file raises."""
    with np.load(path) as archive:
        names = sorted(archive.files)
        weights = [archive[n] for n in names if n.startswith("weight_")]
        state: dict[str, Weights] = {}
        for name in names:
            if name.startswith("state_"):
                key = name[len("state_"):].rsplit("_", 1)[0]
                state.setdefault(key, []).append(archive[name])
    return weights, state


def write_device_states(path: Path, states: dict[int, dict[str, Weights]]) -> None:
    """What each device remembers (named lists of arrays per device id) in one archive."""
    arrays = {f"d{device:06d}_{name}_{i:04d}": array
              for device, state in states.items() for name, tensors in state.items()
              for i, array in enumerate(tensors)}
    atomic_write(path, lambda h: np.savez(h, **arrays))


def read_device_states(path: Path) -> dict[int, dict[str, Weights]]:
    """What :func:`write_device_states` wrote; {} when there is no file."""
    if not path.is_file():
        return {}
    states: dict[int, dict[str, Weights]] = {}
    with np.load(path) as archive:
        for key in sorted(archive.files):
            device, name = key.split("_", 1)
            name = name.rsplit("_", 1)[0]
            states.setdefault(int(device[1:]), {}).setdefault(name, []).append(archive[key])
    return states
