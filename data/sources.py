"""One entry point for every data source: a built-in name, an image folder, a CSV or an ``.npz`` file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from data.datasets import DATASET_NAMES, Dataset, load_dataset
from data.errors import DataError
from data.spec import Preprocessing, SourceOptions

FILE_SOURCES = (".csv", ".npz")
FEEDS = {"image": ("folder", ".npz"), "array": (".npz",), "tabular": (".csv",)}  # spec kind -> device sources


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


def model_input_shape(x: np.ndarray) -> tuple[int, ...]:
    """The model's input shape for stored samples ``x``: grey images get a channel axis."""
    shape = tuple(x.shape[1:])
    return (*shape, 1) if len(shape) == 2 else shape


def encode_source(
    name: str, spec: Preprocessing, progress: Callable[[str], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A device's own data (a folder, CSV or .npz at ``name``) encoded with the federation's ``spec``.

    Every sample of the source is returned (inputs, targets); a source whose
    encoded inputs do not have the federation's input shape is a DataError.
    """
    report = progress or (lambda message: None)
    problem = None if not is_builtin(name) else f"{name!r} is a built-in data set, not a device's own files"
    problem = problem or source_problem(name)
    if problem:
        raise DataError(problem)
    path = Path(name).expanduser()
    given = "folder" if path.is_dir() else path.suffix.lower()
    if given not in FEEDS.get(spec.kind, ()):
        raise DataError(f"{name} cannot feed this federation: its data is {spec.kind} "
                        f"(from {' or '.join(FEEDS.get(spec.kind, ('a built-in set',)))}), not a {given}")
    if path.is_dir():
        from data.image_folder import encode_image_folder

        x, y = encode_image_folder(path, spec, report)
    elif path.suffix.lower() == ".csv":
        from data.tabular import encode_csv

        x, y = encode_csv(path, spec, report)
    else:
        from data.arrays import encode_npz

        x, y = encode_npz(path, spec, report)
    if model_input_shape(x) != tuple(spec.input_shape):
        raise DataError(f"{name} gives inputs of shape {model_input_shape(x)}; this federation's model takes "
                        f"{tuple(spec.input_shape)}")
    return x, y
