"""Try the global model on one's own data: a colour/grey upload at the data's size, or a form of feature values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from data.errors import DataError
from data.prepare import describe_output, image_input, table_input
from data.spec import Preprocessing
from app.charts import probabilities_figure

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif"]


def _show_output(outputs: np.ndarray, spec: Preprocessing, untrained: bool, key: str) -> None:
    prefix = "Untrained model's guess" if untrained else "Predicted"
    if spec.task == "regression":
        for row, result in enumerate(describe_output(outputs, spec)):
            st.markdown(f"#### {prefix}{f' (row {row + 1})' if len(outputs) > 1 else ''}: {result['value']:.4g}")
        return
    best = describe_output(outputs[:1], spec)[0]["predictions"][0]
    st.markdown(f"#### {prefix}: {best['class']}")
    st.caption(f"Probability {best['probability']:.1%}")
    st.plotly_chart(probabilities_figure(outputs[0], spec.class_names, untrained), key=f"probabilities-{key}",
                    config={"displayModeBar": False})


def image_panel(federation, spec: Preprocessing, untrained: bool) -> None:
    """An upload brought to the data's own shape and colour mode (no Fashion-MNIST inversion or cropping)."""
    uploaded = st.file_uploader("Upload an image", type=UPLOAD_TYPES, key="upload_own")
    if uploaded is None:
        st.caption(f"Uploads are cropped to their centre square and resized to {spec.image_size}×{spec.image_size} "
                   f"{'colour' if spec.color == 'rgb' else 'grey'}, like the training images.")
        return
    try:
        pixels = image_input(uploaded.getvalue(), spec)
    except DataError as error:
        st.error(str(error))
        return
    shown, result = st.columns([1, 2], gap="medium")
    shown.image(np.clip(pixels, 0, 1), caption=f"What the model sees: {spec.image_size}×{spec.image_size}",
                width=196, clamp=True)
    with result, st.container(key="prediction-own-upload"):
        _show_output(federation.predict(pixels[None]), spec, untrained, "own-upload")


def _feature_inputs(spec: Preprocessing) -> pd.DataFrame:
    """One number input per numeric column (at its training mean) and a choice per text column."""
    values = {}
    columns = st.columns(min(4, max(1, len(spec.numeric_columns) + len(spec.categories))))
    for i, (name, mean) in enumerate(zip(spec.numeric_columns, spec.mean)):
        values[name] = [columns[i % len(columns)].number_input(name, value=float(mean), key=f"feature_{name}")]
    for j, (name, options) in enumerate(spec.categories.items(), start=len(spec.numeric_columns)):
        values[name] = [columns[j % len(columns)].selectbox(name, options, key=f"feature_{name}")]
    return pd.DataFrame(values)


def table_panel(federation, spec: Preprocessing, untrained: bool) -> None:
    """A form with the feature columns, or an uploaded CSV of rows: the class probabilities or the value."""
    st.caption(f"Predicts {spec.target!r} ({spec.task}) from {', '.join((*spec.numeric_columns, *spec.categories))}.")
    row = _feature_inputs(spec)
    uploaded = st.file_uploader("…or upload a CSV of rows with these columns", type=["csv"], key="upload_rows")
    try:
        inputs = table_input(uploaded.getvalue() if uploaded is not None else row, spec)
    except DataError as error:
        st.error(str(error))
        return
    with st.container(key="prediction-table"):
        _show_output(federation.predict(inputs), spec, untrained, "table")
