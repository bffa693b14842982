"""Shared fixtures: the real data sets from FL_DATA_DIR (default ../shared/datasets)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> str:
    folder = os.environ.get("FL_DATA_DIR") or str(PROJECT_ROOT.parent / "shared" / "datasets")
    if not (Path(folder) / "fashion-mnist").is_dir():
        pytest.fail(f"Fashion-MNIST IDX files not found under {folder}; set FL_DATA_DIR")
    os.environ["FL_DATA_DIR"] = folder
    return folder


@pytest.fixture(scope="session")
def fashion(data_dir):
    from data.datasets import load_dataset

    return load_dataset("fashion-mnist", data_dir)
