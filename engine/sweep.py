"""Parameter sweeps: ``python -m engine sweep sweep.toml`` runs a grid of configurations one after another.

A sweep file holds a ``[base]`` table (any ``FederationConfig`` fields), a
``[grid]`` table whose values are lists (every combination is run), and
optionally ``target = 0.85`` (the accuracy "rounds to target" counts to)::

    target = 0.8
    [base]
    model = "mlp"
    rounds = 3
    [grid]
    strategy = ["fedavg", "krum"]
    num_devices = [5, 7]

Every run is recorded in the run store like any CLI run (labelled with its grid
values), so the dashboard's compare view can overlay them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from engine.config import ConfigError, FederationConfig
from engine.experiments import config_values, read_toml
from engine.results import RoundResult

SWEEP_KEYS = ("base", "grid", "target")


@dataclass(frozen=True)
class SweepPoint:
    """One configuration of the grid and the grid values that made it."""

    values: tuple[tuple[str, Any], ...]
    config: FederationConfig

    @property
    def label(self) -> str:
        return "sweep " + " ".join(f"{name}={value}" for name, value in self.values)


@dataclass(frozen=True)
class Sweep:
    points: tuple[SweepPoint, ...]
    target: float


def parse_sweep(document: Mapping[str, Any], source: str = "sweep") -> Sweep:
    """The grid a sweep document describes, every point validated; ``ConfigError`` names every problem."""
    unknown = sorted(set(document) - set(SWEEP_KEYS))
    problems = [f"{source}: unknown key(s) {', '.join(unknown)}; a sweep has [base], [grid] and target"] if unknown else []
    base, grid = document.get("base", {}), document.get("grid", {})
    target = document.get("target", 0.85)
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise ConfigError(problems + [f"{source}: [base] and [grid] must be tables"])
    if not grid or any(not isinstance(v, list) or not v for v in grid.values()):
        problems.append(f"{source}: [grid] needs at least one setting with a non-empty list of values")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        problems.append(f"{source}: target must be an accuracy in (0, 1], got {target!r}")
    if problems:
        raise ConfigError(problems)
    points = []
    for combination in itertools.product(*grid.values()):
        values = tuple(zip(grid, combination))
        where = f"{source} ({', '.join(f'{k}={v}' for k, v in values)})"
        config = FederationConfig(**config_values({**base, **dict(values)}, where))
        problems.extend(f"{where}: {p}" for p in config.problems())
        points.append(SweepPoint(values, config))
    if problems:
        raise ConfigError(problems)
    return Sweep(tuple(points), float(target))


def load_sweep(path: str | Path) -> Sweep:
    return parse_sweep(read_toml(path), str(path))


def rounds_to(target: float, history: list[RoundResult]) -> int | None:
    """First round whose global accuracy reaches ``target`` (None: never)."""
    return next((r.round for r in history if r.global_accuracy >= target), None)


def summary_row(point: SweepPoint, run_id: str | None, history: list[RoundResult], target: float) -> dict:
    """What the comparison table shows for one finished run."""
    accuracies = [r.global_accuracy for r in history]
    return {
        "run_id": run_id,
        **dict(point.values),
        "rounds": len(history),
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "rounds_to_target": rounds_to(target, history),
        "bytes": sum(r.bytes_up + r.bytes_down for r in history),
        "epsilon": history[-1].epsilon if history else None,
    }


def table(rows: list[dict], names: list[str], target: float) -> str:
    """The comparison table: one line per run, grid values first."""

    def cell(value: Any, digits: int = 4) -> str:
        if value is None:
            return "-"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    headers = ["run id", *names, "final", "best", f"to {target:g}", "MB", "epsilon"]
    lines = [[cell(r["run_id"]), *(cell(r[n]) for n in names), cell(r["final_accuracy"]), cell(r["best_accuracy"]),
              cell(r["rounds_to_target"]), f"{r['bytes'] / 1e6:.1f}", cell(r["epsilon"], 2)] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    render = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([render(headers), *(render(line) for line in lines)])


def run_sweep(sweep: Sweep, store, on_row: Callable[[dict], None], progress=None) -> list[dict]:
    """Run every point one after another (data sets loaded once), recording each in ``store`` when given."""
    from data.datasets import load_dataset
    from engine.federation import Federation

    datasets: dict[tuple[str, str | None], Any] = {}
    rows = []
    for point in sweep.points:
        key = (point.config.dataset, point.config.data_dir)
        if key not in datasets:
            datasets[key] = load_dataset(point.config.dataset, point.config.data_dir, progress)
        federation = Federation(point.config, dataset=datasets[key], store=store, label=point.label)
        snapshot = federation.run_to_end()
        row = summary_row(point, federation.run_id, list(snapshot.history), sweep.target)
        rows.append(row)
        on_row(row)
    return rows
