"""Personalisation's charts: how the global and the personalised models do across devices (fairness).

Both accuracies are measured on each device's own held-out data: the global
model as the device received it, and the device's personalised model
(``--personalize``). Means hide the devices the global model serves badly, so
these charts show the whole distribution, its worst 10% and its spread.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from app.charts import ACCURACY_COLOUR, _layout, _line_mode, device_label, rounds_of
from engine.personalization import mean_finite, worst_share_mean
from engine.results import RoundResult

GLOBAL_NAME, PERSONAL_NAME = "global model", "personalised"
PERSONAL_COLOUR = "#16a34a"
WORST_SHARE = 0.1


def accuracies(result: RoundResult) -> dict[str, tuple[list[int], list[float]]]:
    """Per model (global, personalised): the devices of ``result`` that reported it and their accuracies."""
    found: dict[str, tuple[list[int], list[float]]] = {}
    for name, values in ((GLOBAL_NAME, [(d.device_id, d.received_accuracy) for d in result.devices]),
                         (PERSONAL_NAME, [(d.device_id, d.personalized_accuracy) for d in result.devices])):
        kept = [(device, float(v)) for device, v in values if v is not None and np.isfinite(v)]
        found[name] = ([device for device, _ in kept], [v for _, v in kept])
    return found


def summary(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, mean of the worst 10% of devices, and spread (best minus worst) of per-device accuracies."""
    if not values:
        return {"mean": None, "worst": None, "spread": None}
    return {"mean": mean_finite(values), "worst": worst_share_mean(values, WORST_SHARE),
            "spread": float(max(values) - min(values))}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def distribution_figure(result: RoundResult) -> go.Figure:
    """Box and points per model: every device's accuracy on its own held-out data in ``result``, with the mean
    of the worst 10% of devices marked."""
    figure = go.Figure()
    parts = []
    for name, colour in ((GLOBAL_NAME, ACCURACY_COLOUR), (PERSONAL_NAME, PERSONAL_COLOUR)):
        devices, values = accuracies(result)[name]
        figure.add_trace(go.Box(
            y=values, name=name, boxpoints="all", jitter=0.4, pointpos=0, marker={"color": colour, "size": 7},
            line={"color": colour}, text=[device_label(d) for d in devices], boxmean=True,
            hovertemplate="%{text}: %{y:.1%}<extra>" + name + "</extra>",
        ))
        stats = summary(values)
        if stats["worst"] is not None:
            figure.add_trace(go.Scatter(
                x=[name], y=[stats["worst"]], mode="markers", showlegend=False,
                marker={"symbol": "line-ew-open", "size": 40, "color": "#dc2626", "line": {"width": 3}},
                hovertemplate=f"worst 10% of devices: %{{y:.1%}}<extra>{name}</extra>",
            ))
        parts.append(f"{name}: worst 10% {_percent(stats['worst'])}, spread {_percent(stats['spread'])}")
    figure.update_yaxes(title_text="accuracy on the device's own data", range=[0, 1.02], tickformat=".0%")
    return _layout(figure, f"Round {result.round} across devices — " + "; ".join(parts), showlegend=False)


def fairness_over_rounds_figure(history: Sequence[RoundResult]) -> go.Figure:
    """Per round: the mean (solid) and the worst 10% of devices (dotted), for the global and personalised models."""
    rounds = rounds_of(history)
    figure = go.Figure()
    for name, colour in ((GLOBAL_NAME, ACCURACY_COLOUR), (PERSONAL_NAME, PERSONAL_COLOUR)):
        stats = [summary(accuracies(result)[name][1]) for result in history]
        for key, dash, label in (("mean", "solid", "mean"), ("worst", "dot", "worst 10%")):
            figure.add_trace(go.Scatter(x=rounds, y=[s[key] for s in stats], name=f"{name}, {label}",
                                        mode=_line_mode(rounds), line={"color": colour, "dash": dash}))
    figure.update_xaxes(title_text="round", dtick=1 if len(rounds) <= 20 else None)
    figure.update_yaxes(title_text="accuracy on the devices' own data", range=[0, 1], tickformat=".0%")
    return _layout(figure, "Global vs personalised: mean and worst 10% of devices")
