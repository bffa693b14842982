"""Learning curves and model quality of the latest round, drawn from a snapshot's history."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from engine.results import Snapshot
from app import charts

CHART_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


def render_learning_curves(snapshot: Snapshot) -> None:
    """Global accuracy/loss per round, per-device accuracy per round, and the latest round per device."""
    st.subheader("Learning curves", anchor="learning-curves")
    if not snapshot.history:
        st.info("The charts appear here as soon as the first round completes.")
        return
    st.plotly_chart(charts.global_metrics_figure(snapshot.history), key="global_metrics", config=CHART_CONFIG)
    lines, bars = st.columns([3, 2], gap="medium")
    with lines:
        st.plotly_chart(charts.device_accuracy_figure(snapshot.history), key="device_accuracy", config=CHART_CONFIG)
    with bars:
        st.plotly_chart(charts.latest_device_accuracy_figure(snapshot.latest), key="latest_device_accuracy",
                        config=CHART_CONFIG)
    st.caption("Global accuracy: the averaged model on the server's test images. Device accuracy: each device's "
               "locally trained model on its own held-out data; gaps mark rounds a device sat out.")


def render_model_quality(snapshot: Snapshot, class_names: Sequence[str]) -> None:
    """Confusion matrix and per-class accuracy of the global model after the latest round."""
    st.subheader("Model quality", anchor="model-quality")
    latest = snapshot.latest
    if latest is None:
        st.info("The confusion matrix appears after the first round.")
        return
    matrix, per_class = st.columns([3, 2], gap="medium")
    with matrix:
        st.plotly_chart(charts.confusion_figure(latest.confusion, class_names, latest.round), key="confusion",
                        config=CHART_CONFIG)
    with per_class:
        st.plotly_chart(charts.per_class_accuracy_figure(latest.confusion, class_names), key="per_class",
                        config=CHART_CONFIG)
