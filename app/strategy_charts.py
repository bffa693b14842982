"""Charts for what a particular strategy changes: FedBuff's staleness and its simulated time.

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


def simulated_clock(history: Sequence[RoundResult]) -> list[float]:
    """The simulated time at each server step (running total of the steps' simulated durations)."""
    return np.cumsum([r.simulated_time for r in history]).tolist()


def staleness_figure(history: Sequence[RoundResult]) -> go.Figure:
    """Left: each applied update's staleness per server step, coloured by device. Right: accuracy over the
    simulated clock, the axis on which asynchronous aggregation is faster."""
    figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                           subplot_titles=("Staleness of each applied update", "Accuracy over simulated time"))
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
    figure.update_xaxes(title_text="simulated time (local steps of a full-speed device)", row=1, col=2)
    figure.update_yaxes(title_text="accuracy", range=[0, 1], tickformat=".0%", row=1, col=2)
    return _layout(figure, "Asynchronous aggregation (FedBuff)")


def staleness_caption(history: Sequence[RoundResult]) -> str:
    """One line: mean and largest staleness over the applied updates, and the simulated time so far."""
    values = [d.staleness for result in history for d in result.devices]
    if not values:
        return "No update has been applied yet."
    return (f"{len(values)} updates applied in {len(history)} server steps; staleness mean "
            f"{np.mean(values):.2f}, largest {max(values)} (each weighted by (1+s)^-a). Simulated time "
            f"{simulated_clock(history)[-1]:,.0f} local steps of a full-speed device.")
