"""Learning curves, communication, privacy, device problems and model quality, drawn from a round history.

Used for the live federation and for recorded runs (``prefix`` keeps their widget keys apart).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import streamlit as st

from engine.results import RoundResult, Snapshot
from app import charts, personal_charts, strategy_charts

CHART_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
MAX_DEVICE_LINES = 10  # above this many devices, the per-device charts show a chosen subset
PROBLEM_ROUNDS = 5


def device_subset(history: Sequence[RoundResult], prefix: str = "") -> list[int] | None:
    """The devices to draw per-device charts for: all when few, else a multiselect (default: the first 10)."""
    devices = charts.contributing_devices(history)
    if len(devices) <= MAX_DEVICE_LINES:
        return None
    key = f"{prefix}device_subset"
    if key in st.session_state:  # drop devices no longer in the history (another federation)
        st.session_state[key] = [d for d in st.session_state[key] if d in set(devices)]
    return st.multiselect(f"Devices to plot ({len(devices)} took part)", devices, default=devices[:MAX_DEVICE_LINES],
                          key=key, help="With many devices, the per-device charts show only these.")


def render_history_curves(history: Sequence[RoundResult], prefix: str = "") -> None:
    """Global accuracy/loss, per-device accuracy (a subset for many devices) and the latest round per device."""
    st.plotly_chart(charts.global_metrics_figure(history), key=f"{prefix}global_metrics", config=CHART_CONFIG)
    subset = device_subset(history, prefix)
    lines, bars = st.columns([3, 2], gap="medium")
    with lines:
        st.plotly_chart(charts.device_accuracy_figure(history, subset), key=f"{prefix}device_accuracy",
                        config=CHART_CONFIG)
    with bars:
        st.plotly_chart(charts.latest_device_accuracy_figure(history[-1], subset),
                        key=f"{prefix}latest_device_accuracy", config=CHART_CONFIG)
    metric = "error" if charts.is_regression(history) else "accuracy"
    st.caption(f"Global {metric}: the averaged model on the server's test set. Device {metric}: each device's "
               "locally trained model on its own held-out data; gaps mark rounds a device sat out.")
    if charts.has_personalization(history) and not charts.is_regression(history):
        render_personalization(history, prefix)


def render_personalization(history: Sequence[RoundResult], prefix: str = "") -> None:
    """Global vs personalised accuracy across devices: the latest round's distribution, and mean/worst 10%."""
    spread, trend = st.columns([2, 3], gap="medium")
    with spread:
        st.plotly_chart(personal_charts.distribution_figure(history[-1]), key=f"{prefix}personal_distribution",
                        config=CHART_CONFIG)
    with trend:
        st.plotly_chart(personal_charts.fairness_over_rounds_figure(history), key=f"{prefix}personal_fairness",
                        config=CHART_CONFIG)
    st.caption("Personalisation: each device's own model (dashed in the per-device chart) and the global model "
               "it received, both on the device's own held-out data. The red bar marks the mean of the worst 10% "
               "of devices: fairness across devices is what personalisation is for.")


def render_learning_curves(snapshot: Snapshot) -> None:
    """The live federation's learning curves."""
    st.subheader("Learning curves", anchor="learning-curves")
    if not snapshot.history:
        st.info("The charts appear here as soon as the first round completes.")
        return
    render_history_curves(snapshot.history)


def render_rounds_detail(history: Sequence[RoundResult], prefix: str = "") -> None:
    """Bytes per round, ε next to accuracy (with DP), and who was left out of the latest rounds and why."""
    if not history:
        return
    if charts.has_privacy(history):
        communication, privacy = st.columns(2, gap="medium")
        with privacy:
            st.plotly_chart(charts.privacy_figure(history), key=f"{prefix}privacy", config=CHART_CONFIG)
            st.caption(f"ε after round {history[-1].round}: **{history[-1].epsilon:.2f}** (smaller = more private).")
    else:
        communication = st.container()
    with communication:
        st.plotly_chart(charts.bytes_figure(history), key=f"{prefix}bytes", config=CHART_CONFIG)
        st.caption(charts.traffic_caption(history[-1]))
    if strategy_charts.is_asynchronous(history):
        st.plotly_chart(strategy_charts.staleness_figure(history), key=f"{prefix}staleness", config=CHART_CONFIG)
        st.caption(strategy_charts.staleness_caption(history))
    if strategy_charts.has_selection(history):
        st.plotly_chart(strategy_charts.selection_figure(history), key=f"{prefix}selection", config=CHART_CONFIG)
        st.caption(strategy_charts.selection_caption(history))
    rows = charts.problems_table(history, PROBLEM_ROUNDS)
    if rows:
        st.markdown(f"**Devices left out of the last {min(PROBLEM_ROUNDS, len(history))} rounds**")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", height=min(400, 38 + 35 * len(rows)),
                     key=f"{prefix}problems")
    else:
        st.caption("No device dropped out, failed or was rejected in the latest rounds.")


def render_model_quality(snapshot: Snapshot, class_names: Sequence[str]) -> None:
    """Confusion matrix and per-class accuracy of the global model after the latest round."""
    st.subheader("Model quality", anchor="model-quality")
    latest = snapshot.latest
    if latest is None:
        st.info("The confusion matrix appears after the first round.")
        return
    if latest.is_regression:
        st.markdown(f"Round {latest.round} on the server's test set: mean squared error **{latest.global_loss:.4g}**, "
                    f"mean absolute error **{latest.global_mae:.4g}**, R² **{latest.global_r2:.3f}**.")
        return
    matrix, per_class = st.columns([3, 2], gap="medium")
    with matrix:
        st.plotly_chart(charts.confusion_figure(latest.confusion, class_names, latest.round), key="confusion",
                        config=CHART_CONFIG)
    with per_class:
        st.plotly_chart(charts.per_class_accuracy_figure(latest.confusion, class_names), key="per_class",
                        config=CHART_CONFIG)
