"""Recorded runs: the shared run store, a label per run, and the runs table (pure helpers)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime

import pandas as pd
import streamlit as st

from engine.config import FederationConfig
from engine.store import RunStore, RunSummary, short_id

DEFAULT_RUNS_DIR = "runs"


def runs_dir(env: Mapping[str, str] = os.environ) -> str:
    """Where runs are recorded: ``$FL_RUNS_DIR`` or ./runs."""
    return (env.get("FL_RUNS_DIR") or "").strip() or DEFAULT_RUNS_DIR


@st.cache_resource(show_spinner=False)
def run_store(root: str) -> RunStore:
    """One store per folder, shared by every session."""
    return RunStore(root)


def current_store() -> RunStore:
    return run_store(runs_dir())


def run_label(config: FederationConfig, samples: int | None = None) -> str:
    """A short human label for a run started from the dashboard (``samples``: training images used)."""
    extras = [config.strategy]
    if config.uses_dp:
        extras.append("DP")
    if config.secure_aggregation:
        extras.append("secure agg")
    if config.compression != "none":
        extras.append(config.compression)
    count = config.train_samples or samples
    sized = f" · {count:,} samples" if count else ""
    return f"{config.model.upper()} · {config.num_devices} devices{sized} · {config.partition} · {', '.join(extras)}"


def short_date(created: str) -> str:
    """ISO timestamp -> 'YYYY-MM-DD HH:MM' (unchanged if it does not parse)."""
    try:
        return datetime.fromisoformat(created).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return str(created)


def run_title(run: RunSummary) -> str:
    """One line naming a run in selections."""
    label = run.label or f"{run.model} on {run.dataset}"
    return f"{short_id(run.run_id)} · {short_date(run.created)} · {label} · {run.rounds} rounds"


def percent(value: float | None) -> float:
    """An accuracy as a percentage for the runs table (NaN, shown empty, when there is none yet)."""
    return float("nan") if value is None else 100.0 * value


def runs_table(runs: Sequence[RunSummary]) -> pd.DataFrame:
    """One row per run, newest first as listed by the store."""
    return pd.DataFrame(
        {
            "run": [r.run_id for r in runs],
            "id": [short_id(r.run_id) for r in runs],
            "date": [short_date(r.created) for r in runs],
            "label": [r.label for r in runs],
            "data set": [r.dataset for r in runs],
            "strategy": [r.strategy for r in runs],
            "partition": [r.partition for r in runs],
            "devices": [r.num_devices for r in runs],
            "rounds": [r.rounds for r in runs],
            "final accuracy": [percent(r.final_accuracy) for r in runs],
            "best accuracy": [percent(r.best_accuracy) for r in runs],
            "status": [r.status for r in runs],
        },
        columns=["run", "id", "date", "label", "data set", "strategy", "partition", "devices", "rounds",
                 "final accuracy", "best accuracy", "status"],
    )
