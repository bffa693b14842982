"""Charts for what a particular strategy changes: FedBuff's staleness and simulated time, Krum/Bulyan's selection.

Pure builders like ``app.charts``: a round history in, Plotly figures out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts import ACCURACY_COLOUR, _layout, _line_mode, device_colour, device_label, rounds_of
from engine.results import RoundResult


def is_asynchronous(history: Sequence[RoundResult]) -> bool:
    """True when some applied update was stale: a FedBuff run past its first server step."""
    return any(d.staleness > 0 for result in history for d in result.devices)


def staleness_points(history: Sequence[RoundResult]) -> dict[int, tuple[list[int], list[int]]]:
    """Per device: the server steps its updates went into and their staleness."""
    points: dict[int, tuple[list[int], list[int]]] = {}
    for result in history:
        for device in result.devices:
            steps, staleness = points.setdefault(device.device_id, ([], []))
            steps.append(result.round)
            staleness.append(device.staleness)
    return dict(sorted(points.items()))


# FedBuff's clock: simulated in-process, the wall clock over Flower (engine.async_rounds); a stored run does not say
CLOCK_UNIT = "in-process: simulated local steps of a full-speed device; on Flower: seconds"


def simulated_clock(history: Sequence[RoundResult]) -> list[float]:
    """The simulated time at each server step (running total of the steps' simulated durations)."""
    return np.cumsum([r.simulated_time for r in history]).tolist()


def staleness_figure(history: Sequence[RoundResult]) -> go.Figure:
    """Left: each applied update's staleness per server step, coloured by device. Right: accuracy over the
    simulated clock, the axis on which asynchronous aggregation is faster."""
    figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                           subplot_titles=("Staleness of each applied update", "Accuracy over time"))
    for device_id, (steps, staleness) in staleness_points(history).items():
        figure.add_trace(go.Scatter(
            x=steps, y=staleness, mode="markers", name=device_label(device_id),
            marker={"color": device_colour(device_id), "size": 8, "opacity": 0.8},
            hovertemplate=f"{device_label(device_id)}<br>step %{{x}}: staleness %{{y}}<extra></extra>",
        ), row=1, col=1)
    rounds = rounds_of(history)
    figure.add_trace(go.Scatter(x=simulated_clock(history), y=[r.global_accuracy for r in history],
                                mode=_line_mode(rounds), name="accuracy", line={"color": ACCURACY_COLOUR},
                                customdata=rounds, hovertemplate="step %{customdata}: %{y:.1%}<extra></extra>"),
                     row=1, col=2)
    figure.update_xaxes(title_text="server step", row=1, col=1, dtick=1 if len(rounds) <= 20 else None)
    figure.update_yaxes(title_text="staleness (server steps)", rangemode="tozero", row=1, col=1)
    figure.update_xaxes(title_text=CLOCK_UNIT, row=1, col=2)
    figure.update_yaxes(title_text="accuracy", range=[0, 1], tickformat=".0%", row=1, col=2)
    return _layout(figure, "Asynchronous aggregation (FedBuff)")


def staleness_caption(history: Sequence[RoundResult]) -> str:
    """One line: mean and largest staleness over the applied updates, and the simulated time so far."""
    values = [d.staleness for result in history for d in result.devices]
    if not values:
        return "No update has been applied yet."
    return (f"{len(values)} updates applied in {len(history)} server steps; staleness mean "
            f"{np.mean(values):.2f}, largest {max(values)} (each weighted by (1+s)^-a). Time so far: "
            f"{simulated_clock(history)[-1]:,.0f} ({CLOCK_UNIT}).")


KEPT, LEFT_OUT, NO_UPDATE = 2, 1, 0
SELECTION_COLOURS = [[0.0, "#f1f5f9"], [0.33, "#f1f5f9"], [0.34, "#f59e0b"], [0.66, "#f59e0b"], [0.67, "#16a34a"],
                     [1.0, "#16a34a"]]


def has_selection(history: Sequence[RoundResult]) -> bool:
    """True when a selecting rule (Krum, Multi-Krum, Bulyan) reported which models it kept."""
    return any(r.kept is not None for r in history)


def selection_matrix(history: Sequence[RoundResult]) -> tuple[np.ndarray, list[int]]:
    """Devices x rounds: 2 kept by the rule, 1 sent a valid update that the rule left out, 0 no update; and the
    device ids of the rows."""
    devices = sorted({d.device_id for r in history for d in r.devices})
    rows = {device_id: row for row, device_id in enumerate(devices)}
    matrix = np.full((len(devices), len(history)), NO_UPDATE, np.int64)
    for column, result in enumerate(history):
        kept = set(result.kept) if result.kept is not None else {d.device_id for d in result.devices}
        for device in result.devices:
            matrix[rows[device.device_id], column] = KEPT if device.device_id in kept else LEFT_OUT
    return matrix, devices


def selection_figure(history: Sequence[RoundResult]) -> go.Figure:
    """Which devices' models the robust rule kept each round (green) and which it left out (amber)."""
    matrix, devices = selection_matrix(history)
    words = np.array(["no update", "left out", "kept"])[matrix]
    figure = go.Figure(go.Heatmap(
        z=matrix, x=rounds_of(history), y=[device_label(d) for d in devices], zmin=0, zmax=2,
        colorscale=SELECTION_COLOURS, showscale=False, customdata=words, xgap=1, ygap=1,
        hovertemplate="%{y}, round %{x}: %{customdata}<extra></extra>",
    ))
    figure.update_xaxes(title_text="round", dtick=1 if len(history) <= 20 else None)
    figure.update_yaxes(autorange="reversed")
    return _layout(figure, "Models kept by the robust rule (green) and left out (amber)",
                   height=max(220, 60 + 22 * len(devices)))


def selection_caption(history: Sequence[RoundResult]) -> str:
    """How often each left-out device was left out: the devices the rule distrusts most, first."""
    matrix, devices = selection_matrix(history)
    left_out = (matrix == LEFT_OUT).sum(axis=1)
    worst = [f"device {devices[i]} ({left_out[i]}×)" for i in np.argsort(-left_out, kind="stable") if left_out[i]][:5]
    if not worst:
        return "The rule kept every update so far."
    return "Left out most often: " + ", ".join(worst) + "."
