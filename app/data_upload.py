"""The setup panel's data-set upload: a ``.zip`` of class folders or a ``.csv``, kept for this session only.

The checks (size, zip slip, zip bombs) are :func:`data.upload.save_upload`'s;
this module only keeps one temporary folder per session (removed with the
session's state) and the newest upload in it, re-used while it is unchanged.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import streamlit as st

from data.errors import DataError
from data.upload import save_upload

FOLDER_KEY = "data_upload_folder"  # a tempfile.TemporaryDirectory: deleted when the session's state goes
CURRENT_KEY = "data_upload_current"  # (digest, extracted path)
UPLOAD_TYPES = ["zip", "csv"]


def uploaded_source(name: str, data: bytes) -> str:
    """The data-set path of an upload, extracted once per content into this session's temporary folder."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    current = st.session_state.get(CURRENT_KEY)
    if current is not None and current[0] == digest and Path(current[1]).exists():
        return current[1]
    if FOLDER_KEY not in st.session_state:
        st.session_state[FOLDER_KEY] = tempfile.TemporaryDirectory(prefix="fl-watch-upload-")
    base = Path(st.session_state[FOLDER_KEY].name)
    if current is not None:
        shutil.rmtree(base / current[0], ignore_errors=True)  # only the newest upload is kept
    st.session_state.pop(CURRENT_KEY, None)
    try:
        path = str(save_upload(name, data, base / digest))
    except BaseException:
        shutil.rmtree(base / digest, ignore_errors=True)
        raise
    st.session_state[CURRENT_KEY] = (digest, path)
    return path


def dataset_widget(box, typed: str) -> str:
    """The typed data set (a built-in name or a path), or the uploaded one when there is an upload."""
    uploaded = box.file_uploader("…or upload a .zip of class folders or a .csv", type=UPLOAD_TYPES,
                                 key="setup_upload",
                                 help="Extracted into a temporary folder for this session only, then read like a "
                                      "folder or file path. Archives are checked: no paths outside the folder, "
                                      "no links, limited decompressed size.")
    if uploaded is None:
        return typed
    try:
        path = uploaded_source(uploaded.name, uploaded.getvalue())
    except DataError as error:
        box.error(f"{uploaded.name}: {error}")
        return typed
    box.caption(f"Using the upload {uploaded.name}.")
    return path
