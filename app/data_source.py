"""The setup panel's data source: a built-in set, a folder or file path, or an uploaded .zip / .csv."""

from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from data.datasets import DATASET_NAMES
from data.errors import DataError
from data.spec import COLOR_MODES, TASK_CHOICES
from data.upload import save_upload
from engine.config import FederationConfig

SOURCES = ("built-in", "path", "upload")
SOURCE_LABELS = {"built-in": "Built-in", "path": "Folder or file path", "upload": "Upload (.zip or .csv)"}
DATASET_LABELS = {"fashion-mnist": "Fashion-MNIST (clothing)", "mnist": "MNIST (digits)"}
UPLOAD_FOLDER_KEY = "upload_folder"


def _upload_folder() -> Path:
    """This session's folder for uploaded data sets (temporary; removed with the machine's temp files)."""
    if UPLOAD_FOLDER_KEY not in st.session_state:
        st.session_state[UPLOAD_FOLDER_KEY] = tempfile.mkdtemp(prefix="fl-upload-")
    return Path(st.session_state[UPLOAD_FOLDER_KEY])


def _path_widgets(bar, defaults: FederationConfig) -> str:
    source = bar.radio("Data source", SOURCES, format_func=SOURCE_LABELS.get, horizontal=True, key="setup_source",
                       index=0 if defaults.dataset in DATASET_NAMES else 1)
    if source == "built-in":
        return bar.selectbox("Data set", DATASET_NAMES,
                             index=list(DATASET_NAMES).index(defaults.dataset) if defaults.dataset in DATASET_NAMES
                             else 0, format_func=DATASET_LABELS.get, key="setup_dataset")
    if source == "path":
        return bar.text_input(
            "Folder, .csv or .npz on this machine", value="" if defaults.dataset in DATASET_NAMES
            else defaults.dataset, key="setup_dataset_path",
            help="ROOT/<class>/*.jpg, ROOT/train|test/<class>/*, ROOT/devices/<device>/<class>/* (+ ROOT/server/), "
                 "a CSV with a target column, or an .npz with x_train, y_train.").strip()
    uploaded = bar.file_uploader("A .zip of class folders, or a .csv", type=["zip", "csv", "npz"],
                                 key="setup_dataset_upload")
    if uploaded is None:
        return ""
    try:
        return str(save_upload(uploaded.name, uploaded.getvalue(), _upload_folder()))
    except DataError as error:
        bar.error(str(error))
        return ""


def read_data_source(bar, defaults: FederationConfig) -> dict:
    """Render the data-source widgets; the FederationConfig fields they set."""
    dataset = _path_widgets(bar, defaults)
    fields = {"dataset": dataset or "(choose a data set)"}
    if dataset in DATASET_NAMES or not dataset:
        return fields
    if dataset.lower().endswith(".csv"):
        fields["target"] = bar.text_input("Target column", value=defaults.target or "", key="setup_target").strip() or None
        fields["device_column"] = bar.text_input(
            "Device column (optional)", value=defaults.device_column or "", key="setup_device_column",
            help="Each distinct value is one device: choose the natural partition below.").strip() or None
        fields["task"] = bar.selectbox("Task", TASK_CHOICES, index=list(TASK_CHOICES).index(defaults.task),
                                       key="setup_task")
    else:
        side = bar.number_input("Image side in pixels (0 = from the data)", min_value=0, max_value=512,
                                value=defaults.image_size or 0, key="setup_image_size")
        fields["image_size"] = int(side) or None
        fields["color"] = bar.selectbox("Colour", COLOR_MODES, index=list(COLOR_MODES).index(defaults.color),
                                        key="setup_color")
    return fields
