"""Durable runs: an SQLite index of runs and their per-round metrics, plus model checkpoints.

Layout under the runs directory (default ``runs/``)::

    runs.sqlite                      index of runs, per-round and per-device metrics
    <run id>/config.json             the run's full configuration
    <run id>/checkpoints/round-00012.npz   global model (+ strategy state) after round 12
    <run id>/device-state/round-00012.npz  what simulated devices remember after round 12 (e.g. SCAFFOLD's
                                           control variates), the last ``keep_last`` rounds
    <run id>/activity.json           the devices switched off (their ids), kept current for a resume

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
import re
import secrets
import shutil
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Collection, Iterator

from devices.messages import Weights
from engine.config import FederationConfig
from engine.lease import LeaseHeld, RunLease, holder_pid, is_leased
from engine.results import RoundResult
from engine.run_files import (atomic_write, read_checkpoint, read_device_states, round_file, rounds_in,
                              write_checkpoint, write_device_states)
from engine.store_schema import migrate, private_record, round_from_record, sql_real
# The store's types are part of its API: callers import them from here with the store itself.
from engine.store_types import Checkpoint, CheckpointError, RunBusy, RunNotFound, RunSummary, StoreError  # noqa: F401
from engine.store_types import short_id  # noqa: F401

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
"""What a run id may look like (the store makes ``20261201-083830-e027c4``); nothing that leaves the folder."""

ACTIVITY_FILE = "activity.json"
SQLITE_HEADER = b"SQLite format 3\x00"
INTERRUPTED = "interrupted"
"""Status of a run recorded as running whose training process is gone (killed, crashed, machine off)."""


class RunStore:
    """All runs under one directory. Safe to use from several threads (one connection per call)."""

    def __init__(self, root: str | os.PathLike = "runs", keep_last: int = 3):
        self.root = Path(root)
        self.keep_last = keep_last
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"the runs folder {self.root} is a file, not a folder: choose another folder "
                             "(--runs-dir or FL_RUNS_DIR)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create the runs folder {self.root} ({error.strerror}): choose another "
                             "folder (--runs-dir or FL_RUNS_DIR)") from None
        self._check_index()
        with self._connect() as db:
            migrate(db)

    @property
    def index_path(self) -> Path:
        return self.root / "runs.sqlite"

    def _check_index(self) -> None:
        """Refuse a run index that is not an intact SQLite database, before anything writes to it."""
        path = self.index_path
        if not path.is_file() or path.stat().st_size == 0:
            return
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
        if header != SQLITE_HEADER:
            raise self._damaged("it is not an SQLite database")
        with self._connect() as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise self._damaged(verdict)

    def _damaged(self, why: str) -> StoreError:
        path = self.index_path
        return StoreError(
            f"the run index {path} is damaged ({why}) and was left untouched: move it aside "
            f"(mv {path} {path}.damaged) to start a new index, or choose another runs folder"
        )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One connection and one transaction; SQLite errors become a :class:`StoreError` saying what to do."""
        try:
            with closing(sqlite3.connect(self.index_path, timeout=30)) as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA foreign_keys=ON")
                with db:  # one transaction: committed on success, rolled back on error
                    yield db
        except sqlite3.DatabaseError as error:
            text = str(error)
            if any(word in text for word in ("not a database", "malformed", "corrupt")):
                raise self._damaged(text) from None
            raise StoreError(f"cannot use the run index {self.index_path}: {text}") from None

    # -- writing ------------------------------------------------------------------------
    def create_run(self, config: FederationConfig, label: str = "") -> str:
        run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        config_json = json.dumps(config.to_dict(), sort_keys=True)
        atomic_write(self.run_dir(run_id) / "config.json", lambda h: h.write(config_json.encode()))
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
                (run_id, result.round, result.score, result.global_loss, result.seconds,
                 result.bytes_down, result.bytes_up, result.epsilon, json.dumps(record)),
            )
            if not private:
                db.executemany(
                    "INSERT OR REPLACE INTO device_rounds (run_id, round, device_id, samples, accuracy, loss,"
                    " received_accuracy, personalized_accuracy) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(run_id, result.round, d.device_id, d.samples, d.accuracy, d.loss, sql_real(d.received_accuracy),
                      sql_real(d.personalized_accuracy)) for d in result.devices],
                )
            db.execute(
                "UPDATE runs SET rounds = ?, final_accuracy = ?,"
                " best_round = CASE WHEN best_accuracy IS NULL OR ? > best_accuracy THEN ? ELSE best_round END,"
                " best_accuracy = MAX(COALESCE(best_accuracy, ?), ?) WHERE run_id = ?",
                (result.round, result.score, result.score, result.round, result.score, result.score, run_id),
            )
        self._prune_checkpoints(run_id)

    def set_status(self, run_id: str, status: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))

    def lease(self, run_id: str) -> RunLease:
        """The exclusive right to train ``run_id``, held until released or this process ends."""
        try:
            return RunLease(self.run_dir(run_id))
        except LeaseHeld:
            raise RunBusy(self._busy(run_id, "it is already being trained")) from None

    def is_live(self, run_id: str) -> bool:
        """Whether an open federation (in any process) is training ``run_id`` right now."""
        return is_leased(self.run_dir(run_id))

    def _busy(self, run_id: str, what: str) -> str:
        pid = holder_pid(self.run_dir(run_id))
        by = f" by process {pid}" if pid and int(pid) != os.getpid() else " in this process" if pid else ""
        return f"run {run_id}: {what}{by}; stop that training first"

    def rewind(self, run_id: str, server_round: int) -> None:
        """Forget the rounds after ``server_round`` (their model is lost), so training redoes them."""
        with self._connect() as db:
            db.execute("DELETE FROM rounds WHERE run_id = ? AND round > ?", (run_id, server_round))
            db.execute("DELETE FROM device_rounds WHERE run_id = ? AND round > ?", (run_id, server_round))
            last = db.execute("SELECT global_accuracy FROM rounds WHERE run_id = ? AND round = ?",
                              (run_id, server_round)).fetchone()
            best = db.execute("SELECT round, global_accuracy FROM rounds WHERE run_id = ?"
                              " ORDER BY global_accuracy DESC, round LIMIT 1", (run_id,)).fetchone()
            db.execute("UPDATE runs SET rounds = ?, final_accuracy = ?, best_round = ?, best_accuracy = ?"
                       " WHERE run_id = ?", (server_round, last[0] if last else None, best[0] if best else None,
                                             best[1] if best else None, run_id))
        for later in self.checkpoint_rounds(run_id):
            if later > server_round:  # unreadable: kept aside under a name the store ignores
                path = self.checkpoint_path(run_id, later)
                path.replace(path.with_name(path.name + ".unreadable"))

    def _write_checkpoint(self, run_id: str, server_round: int, weights: Weights, state: dict[str, Weights]) -> None:
        write_checkpoint(self.checkpoint_path(run_id, server_round), weights, state)

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
        path = self._device_state_path(run_id, server_round)
        write_device_states(path, states)
        for kept in rounds_in(path.parent):
            if kept <= server_round - self.keep_last:
                round_file(path.parent, kept).unlink(missing_ok=True)

    def load_device_states(self, run_id: str, server_round: int) -> dict[int, dict[str, Weights]]:
        """What :meth:`save_device_states` kept for ``server_round``; {} when nothing was kept."""
        return read_device_states(self._device_state_path(run_id, server_round))

    def save_inactive_devices(self, run_id: str, device_ids: Collection[int]) -> None:
        """Record which devices are switched off now (atomic), so a resumed run keeps them off."""
        text = json.dumps({"inactive": sorted(int(d) for d in device_ids)})
        atomic_write(self.run_dir(run_id) / ACTIVITY_FILE, lambda h: h.write(text.encode()))

    def load_inactive_devices(self, run_id: str) -> set[int]:
        """The devices :meth:`save_inactive_devices` recorded as off; none for older runs or an unreadable file."""
        try:
            ids = json.loads((self.run_dir(run_id) / ACTIVITY_FILE).read_text())["inactive"]
            return {int(d) for d in ids}
        except (OSError, ValueError, KeyError, TypeError):
            return set()

    def _device_state_path(self, run_id: str, server_round: int) -> Path:
        return round_file(self.run_dir(run_id) / "device-state", server_round)

    # -- reading ------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        if not RUN_ID.fullmatch(run_id):
            raise RunNotFound(f"no run {run_id!r} in {self.root} (run ids are letters, digits and dashes)")
        return self.root / run_id

    def checkpoint_path(self, run_id: str, server_round: int) -> Path:
        return round_file(self.run_dir(run_id) / "checkpoints", server_round)

    def checkpoint_rounds(self, run_id: str) -> list[int]:
        """Rounds that have a checkpoint file under the store's own naming, oldest first."""
        return rounds_in(self.run_dir(run_id) / "checkpoints")

    def list_runs(self) -> list[RunSummary]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {self._summary_columns()} FROM runs ORDER BY created DESC, run_id DESC")
            return [self._settled(self._summary(row)) for row in rows.fetchall()]

    def summary(self, run_id: str) -> RunSummary:
        with self._connect() as db:
            row = db.execute(f"SELECT {self._summary_columns()} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"no run {run_id!r} in {self.root}")
        return self._settled(self._summary(row))

    def _settled(self, run: RunSummary) -> RunSummary:
        """A run recorded as running whose training process is gone (e.g. kill -9) becomes interrupted."""
        if run.status != "running" or self.is_live(run.run_id):
            return run
        with self._connect() as db:
            db.execute("UPDATE runs SET status = ? WHERE run_id = ? AND status = 'running'",
                       (INTERRUPTED, run.run_id))
        return replace(run, status=INTERRUPTED)

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
        """The global model after ``server_round``.

        Without a round: the last completed round's, or if that checkpoint is
        missing or unreadable (a truncated file), the newest intact older one,
        with ``note`` saying so. Raises :class:`CheckpointError` naming the
        checkpoints that exist when there is none to use.
        """
        if server_round is not None:
            try:
                return self._read_checkpoint(run_id, server_round)
            except CheckpointError as error:
                raise CheckpointError(f"{error}; {self._kept(run_id)}") from None
        last = self.summary(run_id).rounds
        if last == 0:
            raise CheckpointError(f"run {run_id} has no completed round yet, so it has no model")
        candidates = [last] + [r for r in reversed(self.checkpoint_rounds(run_id)) if r < last]
        problem = ""
        for candidate in candidates:
            try:
                checkpoint = self._read_checkpoint(run_id, candidate)
            except CheckpointError as error:
                problem = problem or str(error)
                continue
            if candidate == last:
                return checkpoint
            return replace(checkpoint, note=f"{problem}; using round {candidate}, the newest intact checkpoint")
        raise CheckpointError(f"{problem} and no older checkpoint is intact, so the run's model is lost")

    def _kept(self, run_id: str) -> str:
        rounds = self.checkpoint_rounds(run_id)
        return f"checkpoints kept: rounds {', '.join(map(str, rounds))}" if rounds else "no checkpoints are kept"

    def _read_checkpoint(self, run_id: str, server_round: int) -> Checkpoint:
        path = self.checkpoint_path(run_id, server_round)
        if not path.is_file():
            raise CheckpointError(f"run {run_id} has no checkpoint for round {server_round}")
        try:
            weights, state = read_checkpoint(path)
        except Exception as error:  # noqa: BLE001 - zipfile, zlib, numpy and OS errors for a damaged file
            raise CheckpointError(f"round {server_round}'s checkpoint of run {run_id} is unreadable "
                                  f"({type(error).__name__}: {error})") from None
        if not weights:
            raise CheckpointError(f"round {server_round}'s checkpoint of run {run_id} holds no weights")
        return Checkpoint(server_round, weights, state)

    def device_accuracy(self, run_id: str) -> list[tuple[int, int, float]]:
        """(round, device, accuracy) rows, for charts of many runs without loading whole records."""
        with self._connect() as db:
            return db.execute(
                "SELECT round, device_id, accuracy FROM device_rounds WHERE run_id = ? ORDER BY round, device_id",
                (run_id,),
            ).fetchall()

    def device_personalization(self, run_id: str) -> list[tuple[int, int, float | None, float | None]]:
        """(round, device, global model's accuracy, personalised model's accuracy) rows, both on the device's own
        held-out data; NULL where a round recorded none (rounds before this column existed, no --personalize)."""
        with self._connect() as db:
            return db.execute(
                "SELECT round, device_id, received_accuracy, personalized_accuracy FROM device_rounds"
                " WHERE run_id = ? ORDER BY round, device_id", (run_id,),
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
        summary = self.summary(run_id)  # raises RunNotFound for an unknown id, whatever the format
        if fmt == "json":
            return json.dumps({"run": asdict(summary),
                               "rounds": [r.to_json_dict() for r in self.load_history(run_id)]}, indent=1)
        table = self.metrics_table(run_id)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(table[0]) if table else ["round"])
        writer.writeheader()
        writer.writerows(table)
        return out.getvalue()

    # -- deleting -----------------------------------------------------------------------
    def delete_run(self, run_id: str) -> None:
        """Delete a run; refused (:class:`RunBusy`) while it trains. Its lease is held meanwhile."""
        try:
            lease = RunLease(self.run_dir(run_id))
        except LeaseHeld:
            raise RunBusy(self._busy(run_id, "cannot delete it while it is being trained")) from None
        try:
            with self._connect() as db:
                db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            shutil.rmtree(self.run_dir(run_id), ignore_errors=True)
        finally:
            lease.release()

    def delete_all(self, keep: Collection[str] = ()) -> list[str]:
        """Delete every run not in ``keep`` and not training; returns the ids of the runs kept as training."""
        kept = []
        for run in self.list_runs():
            if run.run_id in keep:
                continue
            try:
                self.delete_run(run.run_id)
            except RunBusy:
                kept.append(run.run_id)
        return kept

    @staticmethod
    def _summary_columns() -> str:
        return ", ".join(RunSummary.__dataclass_fields__)

    @staticmethod
    def _summary(row) -> RunSummary:
        summary = RunSummary(*row)
        return RunSummary(**{**asdict(summary), "private": bool(summary.private)})
