"""The run index's SQLite schema, its migrations, and how a round is stored as a JSON record."""

from __future__ import annotations

import sqlite3

import numpy as np

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
    received_accuracy REAL,
    personalized_accuracy REAL,
    PRIMARY KEY (run_id, round, device_id)
);
"""

ADDED_COLUMNS = {"device_rounds": (("received_accuracy", "REAL"), ("personalized_accuracy", "REAL"))}
"""Columns newer than the first schema: added to an older index when it is opened (their old rows hold NULL)."""


def migrate(db: sqlite3.Connection) -> None:
    """Create what is missing and add the columns an index made by an older version lacks."""
    db.executescript(SCHEMA)
    for table, columns in ADDED_COLUMNS.items():
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns:
            if name not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def sql_real(value: float | None) -> float | None:
    """A metric as an SQL value: NULL where there is none (NaN)."""
    return None if value is None or value != value else float(value)


def round_from_record(record: dict) -> RoundResult:
    """Rebuild a :class:`RoundResult` from its stored JSON form."""
    fields = dict(record)
    fields["selected"] = tuple(fields["selected"])
    fields["devices"] = tuple(DeviceRoundResult(**d) for d in fields["devices"])
    fields["problems"] = tuple(DeviceProblem(**p) for p in fields["problems"])
    fields["confusion"] = np.asarray(fields["confusion"], dtype=np.int64)
    if fields.get("kept") is not None:
        fields["kept"] = tuple(fields["kept"])
    return RoundResult(**fields)


def private_record(result: RoundResult) -> dict:
    """The round as stored under secure aggregation: nothing about individual devices."""
    record = result.to_json_dict()
    record["devices"], record["problems"], record["selected"], record["kept"] = [], [], [], None
    return record
