"""One entry point for every data source: a built-in name, an image folder, a CSV or an ``.npz`` file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from data.datasets import DATASET_NAMES, Dataset, load_dataset
from data.errors import DataError
from data.spec import SourceOptions

FILE_SOURCES = (".csv", ".npz")


def is_builtin(name: str) -> bool:
    return name in DATASET_NAMES


def source_problem(name: str) -> str | None:
    """Why ``name`` names no data source (None: a built-in name or a path that could be one)."""
    if is_builtin(name):
        return None
    path = Path(name).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() in FILE_SOURCES):
        return None
    if path.exists():
        return f"data set {name!r} is a {path.suffix or 'file without suffix'}; use a folder, .csv or .npz"
    return (f"data set {name!r} is neither a built-in name ({', '.join(DATASET_NAMES)}) nor an existing "
            "folder, .csv or .npz file")


def load_source(
    name: str,
    data_dir: str | os.PathLike | None = None,
    options: SourceOptions = SourceOptions(),
    progress: Callable[[str], None] | None = None,
) -> Dataset:
    """The data set ``name``: a built-in name (IDX files in ``data_dir``) or a path to a folder, CSV or npz."""
    report = progress or (lambda message: None)
    if is_builtin(name):
        return load_dataset(name, data_dir, report)
    problem = source_problem(name)
    if problem:
        raise DataError(problem)
    path = Path(name).expanduser()
    if path.is_dir():
        from data.image_folder import load_image_folder

        return load_image_folder(path, options, report)
    if path.suffix.lower() == ".csv":
        from data.tabular import load_csv

        return load_csv(path, options, report)
    from data.arrays import load_npz

    return load_npz(path, options, report)
