"""Pure chart builders: round history, histograms and predictions in, Plotly figures out.

Nothing here touches Streamlit or the engine's threads, so every function is
unit-testable with hand-made ``RoundResult`` records.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.results import DeviceRoundResult, RoundResult

CHART_HEIGHT = 330
ACCURACY_COLOUR = "#2563eb"
LOSS_COLOUR = "#dc2626"
HIGHLIGHT_COLOUR = "#2563eb"
MUTED_COLOUR = "#94a3b8"
# A constant uirevision keeps legend clicks and zoom while live updates replace the figure.
UI_REVISION = "keep"
DEVICE_COLOURS = plotly.colors.qualitative.D3 + plotly.colors.qualitative.Alphabet
MAX_MARKER_ROUNDS = 30  # beyond this, lines without markers stay readable


def _layout(figure: go.Figure, title: str, height: int = CHART_HEIGHT, **extra) -> go.Figure:
    figure.update_layout(
        title={"text": title, "font": {"size": 15}},
        height=height,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        uirevision=UI_REVISION,
        **extra,
    )
    return figure


def device_label(device_id: int) -> str:
    return f"Device {device_id}"


def device_colour(device_id: int) -> str:
    """A fixed colour per device, so a device keeps its colour in every chart and round."""
    return DEVICE_COLOURS[device_id % len(DEVICE_COLOURS)]


def _line_mode(rounds: Sequence[int]) -> str:
    return "lines+markers" if len(rounds) <= MAX_MARKER_ROUNDS else "lines"


def rounds_of(history: Sequence[RoundResult]) -> list[int]:
    return [result.round for result in history]


def contributing_devices(history: Sequence[RoundResult]) -> list[int]:
    """Every device that sent an update in some round, in id order."""
    return sorted({d.device_id for result in history for d in result.devices})


def device_accuracy_series(history: Sequence[RoundResult], devices: Sequence[int] | None = None,
                           personalised: bool = False) -> dict[int, list[float | None]]:
    """Per device that ever sent an update (or only ``devices``): its local accuracy each round (its personalised
    model's with ``personalised``), ``None`` where it took no part."""
    device_ids = contributing_devices(history)
    if devices is not None:
        device_ids = [d for d in device_ids if d in set(devices)]
    series: dict[int, list[float | None]] = {device_id: [] for device_id in device_ids}
    regression = is_regression(history)
    for result in history:
        by_device = {d.device_id: device_score(d, regression, personalised) for d in result.devices}
        for device_id in device_ids:
            value = by_device.get(device_id)
            series[device_id].append(None if value is None or not np.isfinite(value) else float(value))
    return series


def device_score(device: DeviceRoundResult, regression: bool, personalised: bool = False) -> float:
    """The task's per-device metric: accuracy (MSE for a regression) of its trained or its personalised model."""
    if personalised:
        return device.personalized_loss if regression else device.personalized_accuracy
    return device.loss if regression else device.accuracy


def has_personalization(history: Sequence[RoundResult]) -> bool:
    """True when some device reported a personalised model (``--personalize``)."""
    return any(device_score(d, r.is_regression, True) is not None for r in history for d in r.devices)


def is_regression(history: Sequence[RoundResult]) -> bool:
    """Whether the run is a regression: its charts show MSE and R² instead of accuracy."""
    return bool(history) and history[-1].is_regression


def per_class_accuracy(confusion: np.ndarray) -> list[float | None]:
    """Recall of each class (diagonal / row total); ``None`` for classes absent from the test set."""
    matrix = np.asarray(confusion, dtype=float)
    totals = matrix.sum(axis=1)
    return [float(matrix[i, i] / totals[i]) if totals[i] > 0 else None for i in range(len(matrix))]


def global_metrics_figure(history: Sequence[RoundResult]) -> go.Figure:
    """Server-side test accuracy and loss of the global model after each round, side by side."""
    rounds = rounds_of(history)
    regression = is_regression(history)
    titles = ("R²", "Mean squared error") if regression else ("Accuracy", "Loss")
    figure = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.12)
    figure.add_trace(
        go.Scatter(x=rounds, y=[r.global_r2 if regression else r.global_accuracy for r in history],
                   mode=_line_mode(rounds), name="R²" if regression else "accuracy", line={"color": ACCURACY_COLOUR}),
        row=1, col=1,
    )
    figure.add_trace(
        go.Scatter(x=rounds, y=[r.global_loss for r in history], mode=_line_mode(rounds),
                   name="loss", line={"color": LOSS_COLOUR}),
        row=1, col=2,
    )
    figure.update_xaxes(title_text="round", dtick=1 if len(rounds) <= 20 else None)
    if not regression:
        figure.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=1)
    figure.update_yaxes(rangemode="tozero", row=1, col=2)
    return _layout(figure, "Global model on the server's test set", showlegend=False)


def device_accuracy_figure(history: Sequence[RoundResult], devices: Sequence[int] | None = None) -> go.Figure:
    """One line per device (or per device of ``devices``; legend toggles it); gaps mark rounds it sat out."""
    rounds = rounds_of(history)
    figure = go.Figure()
    for device_id, values in device_accuracy_series(history, devices).items():
        figure.add_trace(
            go.Scatter(x=rounds, y=values, mode=_line_mode(rounds), name=device_label(device_id),
                       connectgaps=False, marker={"size": 6}, line={"color": device_colour(device_id), "width": 2},
                       legendgroup=str(device_id))
        )
    if has_personalization(history):  # dashed: the device's personalised model, toggled with its line
        for device_id, values in device_accuracy_series(history, devices, personalised=True).items():
            figure.add_trace(
                go.Scatter(x=rounds, y=values, mode=_line_mode(rounds), name=f"{device_label(device_id)} personalised",
                           connectgaps=False, marker={"size": 5, "symbol": "diamond"}, legendgroup=str(device_id),
                           line={"color": device_colour(device_id), "width": 1.5, "dash": "dash"}, showlegend=False)
            )
    figure.update_xaxes(title_text="round", dtick=1 if len(rounds) <= 20 else None)
    if is_regression(history):
        figure.update_yaxes(title_text="local mean squared error", rangemode="tozero")
        return _layout(figure, "Each device's error on its own held-out data", legend={"title": {"text": "click to hide"}})
    figure.update_yaxes(title_text="local accuracy", range=[0, 1], tickformat=".0%")
    return _layout(figure, "Each device's accuracy on its own held-out data",
                   legend={"title": {"text": "click to hide"}})


def latest_device_accuracy_figure(result: RoundResult | None, devices: Sequence[int] | None = None) -> go.Figure:
    """Bars: each contributing device's (of ``devices``, if given) local accuracy in ``result`` (the latest round)."""
    figure = go.Figure()
    title = "Latest round: accuracy per device"
    regression = result is not None and result.is_regression
    if result is not None:
        wanted = None if devices is None else set(devices)
        devices = sorted((d for d in result.devices if wanted is None or d.device_id in wanted),
                         key=lambda d: d.device_id)
        figure.add_trace(
            go.Bar(
                x=[device_label(d.device_id) for d in devices],
                y=[d.loss if regression else d.accuracy for d in devices],
                text=[f"{d.loss:.3g}" if regression else f"{d.accuracy:.0%}" for d in devices],
                textposition="auto",
                marker={"color": [device_colour(d.device_id) for d in devices]},
                customdata=[d.samples for d in devices],
                hovertemplate="%{x}: %{y:.3g} (%{customdata} samples)<extra></extra>" if regression
                else "%{x}: %{y:.1%} (%{customdata} samples)<extra></extra>",
            )
        )
        title = f"Round {result.round}: {'mean squared error' if regression else 'accuracy'} per device"
    figure.update_xaxes(type="category")
    if regression:
        figure.update_yaxes(rangemode="tozero")
        return _layout(figure, title, showlegend=False)
    figure.update_yaxes(range=[0, 1], tickformat=".0%")
    return _layout(figure, title, showlegend=False)


def label_distribution_figure(histogram: np.ndarray, class_names: Sequence[str], regression: bool = False) -> go.Figure:
    """Heatmap of training samples per device (rows) and class, or target range for a regression (columns)."""
    counts, devices = aggregate_histogram(histogram)
    show_text = counts.shape[0] <= 30 and np.asarray(histogram).shape[0] <= MAX_HEATMAP_ROWS
    figure = go.Figure(
        go.Heatmap(
            z=counts,
            x=list(class_names),
            y=devices,
            colorscale="Blues",
            text=counts if show_text else None,
            texttemplate="%{text}" if show_text else None,
            hovertemplate="%{y}, %{x}: %{z} samples<extra></extra>",
            colorbar={"title": {"text": "samples"}},
        )
    )
    figure.update_yaxes(autorange="reversed", type="category")
    figure.update_xaxes(type="category", tickangle=-35)
    height = max(CHART_HEIGHT, min(900, 60 + 26 * len(devices)))
    title = "Target distribution: training samples per device and target range" if regression else \
        "Label distribution: training samples per device and class"
    return _layout(figure, title, height=height)


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], round_number: int | None = None) -> go.Figure:
    """Heatmap of the global model's confusion matrix (true class rows, predicted class columns)."""
    matrix = np.asarray(confusion)
    names = list(class_names)
    figure = go.Figure(
        go.Heatmap(
            z=matrix, x=names, y=names, colorscale="Blues", text=matrix, texttemplate="%{text}",
            hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>", showscale=False,
        )
    )
    figure.update_xaxes(title_text="predicted", type="category", tickangle=-35)
    figure.update_yaxes(title_text="true", type="category", autorange="reversed")
    suffix = f" after round {round_number}" if round_number is not None else ""
    return _layout(figure, f"Confusion matrix{suffix}", height=420)


def per_class_accuracy_figure(confusion: np.ndarray, class_names: Sequence[str]) -> go.Figure:
    """Horizontal bars: share of each class's test images the global model gets right."""
    values = per_class_accuracy(confusion)
    names = list(class_names)
    figure = go.Figure(
        go.Bar(
            x=[0 if v is None else v for v in values], y=names, orientation="h",
            # outside the bar, so a class the model never gets right still shows "0%"
            text=["n/a" if v is None else f"{v:.0%}" for v in values], textposition="outside", cliponaxis=False,
            marker={"color": ACCURACY_COLOUR}, hovertemplate="%{y}: %{x:.1%}<extra></extra>",
        )
    )
    figure.update_xaxes(range=[0, 1.12], tickformat=".0%", tickvals=[0, 0.25, 0.5, 0.75, 1])
    figure.update_yaxes(type="category", autorange="reversed")
    return _layout(figure, "Accuracy per class", height=420, showlegend=False)


def probabilities_figure(probabilities: np.ndarray, class_names: Sequence[str], untrained: bool = False) -> go.Figure:
    """Horizontal bars of every class probability, the predicted class highlighted."""
    values = np.asarray(probabilities, dtype=float).ravel()
    best = int(np.argmax(values))
    colours = [HIGHLIGHT_COLOUR if i == best else MUTED_COLOUR for i in range(len(values))]
    figure = go.Figure(
        go.Bar(
            x=values, y=list(class_names), orientation="h", marker={"color": colours},
            text=[f"{v:.1%}" for v in values], textposition="outside", cliponaxis=False,
            hovertemplate="%{y}: %{x:.2%}<extra></extra>",
        )
    )
    figure.update_xaxes(range=[0, 1.12], tickvals=[0, 0.25, 0.5, 0.75, 1], tickformat=".0%")
    figure.update_yaxes(type="category", autorange="reversed")
    title = "Class probabilities" + (" (untrained model!)" if untrained else "")
    return _layout(figure, title, height=360, showlegend=False)


# -- communication, privacy and device problems ------------------------------------------------------------------
UP_COLOUR = "#16a34a"
DOWN_COLOUR = "#9333ea"
EPSILON_COLOUR = "#ea580c"
MAX_HEATMAP_ROWS = 30


def bytes_series(history: Sequence[RoundResult]) -> dict[str, list[float]]:
    """Per round: bytes down and up, their running totals, and the up-link compression ratio."""
    down = [float(r.bytes_down) for r in history]
    up = [float(r.bytes_up) for r in history]
    return {
        "down": down,
        "up": up,
        "cumulative_down": np.cumsum(down).tolist(),
        "cumulative_up": np.cumsum(up).tolist(),
        "compression_ratio": [float(r.compression_ratio) for r in history],
    }


def bytes_figure(history: Sequence[RoundResult]) -> go.Figure:
    """Bytes sent per round (left) and in total so far (right), up- and down-link; the ratio in the title."""
    rounds = rounds_of(history)
    series = bytes_series(history)
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Per round", "Cumulative"), horizontal_spacing=0.12)
    for name, colour, per_round, total in (
        ("up (devices → server)", UP_COLOUR, series["up"], series["cumulative_up"]),
        ("down (server → devices)", DOWN_COLOUR, series["down"], series["cumulative_down"]),
    ):
        figure.add_trace(go.Bar(x=rounds, y=per_round, name=name, marker={"color": colour}, legendgroup=name,
                                hovertemplate="round %{x}: %{y:,.0f} B<extra></extra>"), row=1, col=1)
        figure.add_trace(go.Scatter(x=rounds, y=total, name=name, mode=_line_mode(rounds), legendgroup=name,
                                    showlegend=False, line={"color": colour}), row=1, col=2)
    figure.update_xaxes(title_text="round", dtick=1 if len(rounds) <= 20 else None)
    figure.update_yaxes(title_text="bytes", rangemode="tozero")
    ratio = series["compression_ratio"][-1] if history else 1.0
    title = "Communication (no compression)" if is_uncompressed(ratio) or ratio < 1.0 else \
        f"Communication (latest up-link compression {ratio:.1f}×)"
    return _layout(figure, title, barmode="group")


def is_uncompressed(ratio: float) -> bool:
    """Whether the up-link compression ratio is 1 (plain float32 updates, up to serialisation overhead)."""
    return abs(ratio - 1.0) < 0.05


def traffic_caption(result: RoundResult) -> str:
    """One line on a round's traffic; the ratio to float32 only when the updates were compressed."""
    ratio = result.compression_ratio
    if is_uncompressed(ratio):
        how = "uncompressed float32"
    elif ratio < 1.0:  # a tiny model: the framing outweighs the numbers
        how = f"{1 / ratio:.1f}× its raw float32 size: framing outweighs a small model's numbers"
    else:
        how = f"{ratio:.1f}× smaller than float32"
    return f"Round {result.round}: {result.bytes_up:,} B up ({how}), {result.bytes_down:,} B down."


def privacy_figure(history: Sequence[RoundResult]) -> go.Figure:
    """Global accuracy (left axis) next to the privacy budget ε spent so far (right axis)."""
    rounds = rounds_of(history)
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(go.Scatter(x=rounds, y=[r.global_accuracy for r in history], name="accuracy",
                                mode=_line_mode(rounds), line={"color": ACCURACY_COLOUR}), secondary_y=False)
    figure.add_trace(go.Scatter(x=rounds, y=[r.epsilon for r in history], name="ε (privacy spent)",
                                mode=_line_mode(rounds), line={"color": EPSILON_COLOUR, "dash": "dot"}),
                     secondary_y=True)
    figure.update_xaxes(title_text="round", dtick=1 if len(rounds) <= 20 else None)
    figure.update_yaxes(title_text="accuracy", range=[0, 1], tickformat=".0%", secondary_y=False)
    figure.update_yaxes(title_text="ε", rangemode="tozero", secondary_y=True)
    return _layout(figure, "Accuracy vs. privacy budget (ε grows every round)")


def has_privacy(history: Sequence[RoundResult]) -> bool:
    """True when some round reports a DP budget (ε)."""
    return any(r.epsilon is not None for r in history)


def problems_table(history: Sequence[RoundResult], last_rounds: int = 5) -> list[dict]:
    """Rows (round, device, what, why) for the devices left out of the latest ``last_rounds`` rounds, newest first."""
    rows = []
    for result in reversed(list(history)[-last_rounds:] if last_rounds else list(history)):
        for problem in sorted(result.problems, key=lambda p: p.device_id):
            rows.append({"round": result.round, "device": problem.device_id, "what": problem.kind,
                         "why": problem.reason})
    return rows


def accuracy_overlay_figure(runs: dict[str, Sequence[RoundResult]]) -> go.Figure:
    """One global-accuracy line per run (label → history): compares runs."""
    figure = go.Figure()
    for index, (label, history) in enumerate(runs.items()):
        rounds = rounds_of(history)
        figure.add_trace(go.Scatter(x=rounds, y=[r.global_accuracy for r in history], name=label,
                                    mode=_line_mode(rounds), line={"color": DEVICE_COLOURS[index % len(DEVICE_COLOURS)]}))
    figure.update_xaxes(title_text="round")
    figure.update_yaxes(title_text="global accuracy", range=[0, 1], tickformat=".0%")
    return _layout(figure, "Global accuracy per round, run by run", legend={"title": {"text": "run"}})


def aggregate_histogram(histogram: np.ndarray, max_rows: int = MAX_HEATMAP_ROWS) -> tuple[np.ndarray, list[str]]:
    """At most ``max_rows`` rows: consecutive devices summed into groups when there are more devices."""
    counts = np.asarray(histogram)
    n = counts.shape[0]
    if n <= max_rows:
        return counts, [device_label(i) for i in range(n)]
    edges = np.linspace(0, n, max_rows + 1).round().astype(int)
    rows = [counts[a:b].sum(axis=0) for a, b in zip(edges[:-1], edges[1:])]
    labels = [f"Devices {a}–{b - 1}" for a, b in zip(edges[:-1], edges[1:])]
    return np.vstack(rows), labels
