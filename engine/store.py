"""Durable runs: an SQLite index of runs and their per-round metrics, plus model checkpoints.

Layout under the runs directory (default ``runs/``)::

    runs.sqlite                      index of runs, per-round and per-device metrics
    <run id>/config.json             the run's full configuration
    <run id>/checkpoints/round-00012.npz   global model (+ strategy state) after round 12
    <run id>/device-state/round-00012.npz  what simulated devices remember after round 12 (e.g. SCAFFOLD's
                                           control variates), the last ``keep_last`` rounds

Every write is atomic: a checkpoint is written to a temporary file and renamed
into place before the round's rows are committed in one SQLite transaction,
so a process killed at any moment leaves the run intact up to its last
completed round. The last ``keep_last`` checkpoints and the best one are kept.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
import sqlite3
import tempfile
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from devices.messages import Weights
from engine.config import FederationConfig
from engine.results import DeviceProblem, DeviceRoundResult, RoundResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    dataset TEXT NOT NULL,
    model TEXT NOT NULL,
    strategy TEXT NOT NULL,
    partition TEXT NOT NULL,
    num_devices INTEGER NOT NULL,
    status TEXT NOT NULL,
    rounds INTEGER NOT NULL DEFAULT 0,
    final_accuracy REAL,
    best_accuracy REAL,
    best_round INTEGER,
    private INTEGER NOT NULL DEFAULT 0,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    round INTEGER NOT NULL,
    global_accuracy REAL NOT NULL,
    global_loss REAL NOT NULL,
    seconds REAL NOT NULL,
    bytes_down INTEGER NOT NULL,
    bytes_up INTEGER NOT NULL,
    epsilon REAL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS device_rounds (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    round INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    accuracy REAL,
    loss REAL,
    PRIMARY KEY (run_id, round, device_id)
);
"""


class RunNotFound(KeyError):
    """No run with that id in the store."""


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


def _atomic_write(path: Path, write) -> None:
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


def round_from_record(record: dict) -> RoundResult:
    """Rebuild a :class:`RoundResult` from its stored JSON form."""
    fields = dict(record)
    fields["selected"] = tuple(fields["selected"])
    fields["devices"] = tuple(DeviceRoundResult(**d) for d in fields["devices"])
    fields["problems"] = tuple(DeviceProblem(**p) for p in fields["problems"])
    fields["confusion"] = np.asarray(fields["confusion"], dtype=np.int64)
    return RoundResult(**fields)


def private_record(result: RoundResult) -> dict:
    """The round as stored under secure aggregation: nothing about individual devices."""
    record = result.to_json_dict()
    record["devices"], record["problems"], record["selected"] = [], [], []
    return record


class RunStore:
    """All runs under one directory. Safe to use from several threads (one connection per call)."""

    def __init__(self, root: str | os.PathLike = "runs", keep_last: int = 3):
        self.root = Path(root)
        self.keep_last = keep_last
        self.root.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.root / "runs.sqlite", timeout=30)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            with db:  # one transaction: committed on success, rolled back on error
                yield db

    # -- writing ------------------------------------------------------------------------
    def create_run(self, config: FederationConfig, label: str = "") -> str:
        run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        config_json = json.dumps(config.to_dict(), sort_keys=True)
        _atomic_write(self.run_dir(run_id) / "config.json", lambda h: h.write(config_json.encode()))
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs (run_id, created, label, dataset, model, strategy, partition, num_devices,"
                " status, private, config) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'ready', ?, ?)",
                (run_id, datetime.now(timezone.utc).isoformat(timespec="seconds"), label, config.dataset,
                 config.model, config.strategy, config.partition, config.num_devices,
                 int(config.secure_aggregation), config_json),
            )
        return run_id

    def record_round(
        self, run_id: str, result: RoundResult, weights: Weights, strategy_state: dict[str, Weights], private: bool
    ) -> None:
        """Persist a completed round: checkpoint first, then the rows, in one transaction."""
        self._write_checkpoint(run_id, result.round, weights, strategy_state)
        record = private_record(result) if private else result.to_json_dict()
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, result.round, result.global_accuracy, result.global_loss, result.seconds,
                 result.bytes_down, result.bytes_up, result.epsilon, json.dumps(record)),
            )
            if not private:
                db.executemany(
                    "INSERT OR REPLACE INTO device_rounds VALUES (?, ?, ?, ?, ?, ?)",
                    [(run_id, result.round, d.device_id, d.samples, d.accuracy, d.loss) for d in result.devices],
                )
            db.execute(
                "UPDATE runs SET rounds = ?, final_accuracy = ?,"
                " best_round = CASE WHEN best_accuracy IS NULL OR ? > best_accuracy THEN ? ELSE best_round END,"
                " best_accuracy = MAX(COALESCE(best_accuracy, ?), ?) WHERE run_id = ?",
                (result.round, result.global_accuracy, result.global_accuracy, result.round,
                 result.global_accuracy, result.global_accuracy, run_id),
            )
        self._prune_checkpoints(run_id)

    def set_status(self, run_id: str, status: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))

    def _write_checkpoint(self, run_id: str, server_round: int, weights: Weights, state: dict[str, Weights]) -> None:
        arrays = {f"weight_{i:04d}": w for i, w in enumerate(weights)}
        for name, tensors in state.items():
            arrays.update({f"state_{name}_{i:04d}": t for i, t in enumerate(tensors)})
        _atomic_write(self.checkpoint_path(run_id, server_round), lambda h: np.savez(h, **arrays))

    def _prune_checkpoints(self, run_id: str) -> None:
        keep = set(self.checkpoint_rounds(run_id)[-self.keep_last:])
        best = self.summary(run_id).best_round
        if best is not None:
            keep.add(best)
        for server_round in self.checkpoint_rounds(run_id):
            if server_round not in keep:
                self.checkpoint_path(run_id, server_round).unlink(missing_ok=True)

    def save_device_states(self, run_id: str, server_round: int, states: dict[int, dict[str, Weights]]) -> None:
        """Keep what each simulated device remembers after ``server_round`` (atomic; older rounds pruned)."""
        arrays = {f"d{device:06d}_{name}_{i:04d}": array
                  for device, state in states.items() for name, tensors in state.items()
                  for i, array in enumerate(tensors)}
        _atomic_write(self._device_state_path(run_id, server_round), lambda h: np.savez(h, **arrays))
        folder = self._device_state_path(run_id, server_round).parent
        for path in folder.glob("round-*.npz"):
            if int(path.stem.split("-")[1]) <= server_round - self.keep_last:
                path.unlink(missing_ok=True)

    def load_device_states(self, run_id: str, server_round: int) -> dict[int, dict[str, Weights]]:
        """What :meth:`save_device_states` kept for ``server_round``; {} when nothing was kept."""
        path = self._device_state_path(run_id, server_round)
        if not path.is_file():
            return {}
        states: dict[int, dict[str, Weights]] = {}
        with np.load(path) as archive:
            for key in sorted(archive.files):
                device, name = key.split("_", 1)
                name = name.rsplit("_", 1)[0]
                states.setdefault(int(device[1:]), {}).setdefault(name, []).append(archive[key])
        return states

    def _device_state_path(self, run_id: str, server_round: int) -> Path:
        return self.run_dir(run_id) / "device-state" / f"round-{server_round:05d}.npz"

    # -- reading ------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.root / run_id

    def checkpoint_path(self, run_id: str, server_round: int) -> Path:
        return self.run_dir(run_id) / "checkpoints" / f"round-{server_round:05d}.npz"

    def checkpoint_rounds(self, run_id: str) -> list[int]:
        folder = self.run_dir(run_id) / "checkpoints"
        return sorted(int(p.stem.split("-")[1]) for p in folder.glob("round-*.npz")) if folder.is_dir() else []

    def list_runs(self) -> list[RunSummary]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {self._summary_columns()} FROM runs ORDER BY created DESC, run_id DESC")
            return [self._summary(row) for row in rows.fetchall()]

    def summary(self, run_id: str) -> RunSummary:
        with self._connect() as db:
            row = db.execute(f"SELECT {self._summary_columns()} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"no run {run_id!r} in {self.root}")
        return self._summary(row)

    def load_config(self, run_id: str) -> FederationConfig:
        with self._connect() as db:
            row = db.execute("SELECT config FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"no run {run_id!r} in {self.root}")
        values = json.loads(row[0])
        for key in ("faults", "slowdowns"):  # JSON turned the device ids into strings
            values[key] = {int(k): v for k, v in values[key].items()}
        return FederationConfig(**values)

    def load_history(self, run_id: str) -> list[RoundResult]:
        """Completed rounds in order; rounds whose checkpoint never landed are not part of the run."""
        with self._connect() as db:
            rows = db.execute("SELECT record FROM rounds WHERE run_id = ? ORDER BY round", (run_id,)).fetchall()
        return [round_from_record(json.loads(row[0])) for row in rows]

    def load_checkpoint(self, run_id: str, server_round: int | None = None) -> Checkpoint:
        """The global model after ``server_round`` (default: the last completed round)."""
        if server_round is None:
            server_round = self.summary(run_id).rounds
        path = self.checkpoint_path(run_id, server_round)
        if not path.is_file():
            raise FileNotFoundError(f"run {run_id} has no checkpoint for round {server_round}")
        with np.load(path) as archive:
            names = sorted(archive.files)
            weights = [archive[n] for n in names if n.startswith("weight_")]
            state: dict[str, Weights] = {}
            for name in names:
                if name.startswith("state_"):
                    key = name[len("state_"):].rsplit("_", 1)[0]
                    state.setdefault(key, []).append(archive[name])
        return Checkpoint(server_round, weights, state)

    def device_accuracy(self, run_id: str) -> list[tuple[int, int, float]]:
        """(round, device, accuracy) rows, for charts of many runs without loading whole records."""
        with self._connect() as db:
            return db.execute(
                "SELECT round, device_id, accuracy FROM device_rounds WHERE run_id = ? ORDER BY round, device_id",
                (run_id,),
            ).fetchall()

    def metrics_table(self, run_id: str) -> list[dict]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT round, global_accuracy, global_loss, seconds, bytes_down, bytes_up, epsilon"
                " FROM rounds WHERE run_id = ? ORDER BY round", (run_id,)
            )
            names = [c[0] for c in rows.description]
            return [dict(zip(names, row)) for row in rows.fetchall()]

    def export_metrics(self, run_id: str, fmt: str = "csv") -> str:
        """Per-round metrics as CSV, or the full records (per-device metrics included) as JSON."""
        if fmt == "json":
            return json.dumps({"run": asdict(self.summary(run_id)),
                               "rounds": [r.to_json_dict() for r in self.load_history(run_id)]}, indent=1)
        table = self.metrics_table(run_id)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(table[0]) if table else ["round"])
        writer.writeheader()
        writer.writerows(table)
        return out.getvalue()

    # -- deleting -----------------------------------------------------------------------
    def delete_run(self, run_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    def delete_all(self) -> None:
        for run in self.list_runs():
            self.delete_run(run.run_id)

    @staticmethod
    def _summary_columns() -> str:
        return ", ".join(RunSummary.__dataclass_fields__)

    @staticmethod
    def _summary(row) -> RunSummary:
        summary = RunSummary(*row)
        return RunSummary(**{**asdict(summary), "private": bool(summary.private)})
