"""CSV tables as data sets: feature columns and a ``target`` column, classification or regression.

Numeric features are standardised with the mean and standard deviation of the
*training split* (sums and sums of squares are additive, so each device could
compute its share and the server aggregate them; a real deployment would do
exactly that). Text features with at most :data:`MAX_CATEGORIES` distinct values
are one-hot encoded; more are refused with a message. The task is
classification for a text, boolean or few-valued integer target and regression
for a real-valued one, unless ``task`` says otherwise. ``device_column`` gives
a natural partition: each distinct value is one device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from data.datasets import Dataset
from data.errors import DataError
from data.spec import Preprocessing, SourceOptions
from data.split import stratified_split

MAX_CATEGORIES = 20
"""Most distinct values a text feature may have to be one-hot encoded (and an integer target to be classes)."""
MAX_CSV_BYTES = 200 * 1024 * 1024


def read_csv(path: Path) -> pd.DataFrame:
    """The table at ``path``, or a DataError saying why it cannot be read."""
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    if path.stat().st_size > MAX_CSV_BYTES:
        raise DataError(f"{path} is larger than {MAX_CSV_BYTES // 2**20} MB")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path} is not a readable CSV ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    if frame.empty:
        raise DataError(f"{path} has a header but no rows")
    return frame


def infer_task(values: pd.Series, requested: str) -> str:
    """classification for text, bool or few-valued integer targets; regression for real values."""
    if requested != "auto":
        return requested
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "classification"
    integral = pd.api.types.is_integer_dtype(values) or bool(np.all(np.mod(values.to_numpy(float), 1) == 0))
    return "classification" if integral and values.nunique() <= MAX_CATEGORIES else "regression"


def check_missing(frame: pd.DataFrame, path: Path) -> None:
    counts = frame.isna().sum()
    if counts.any():
        column = str(counts.idxmax())
        first = int(np.flatnonzero(frame[column].isna().to_numpy())[0]) + 2  # 1-based, after the header
        raise DataError(f"{path}: column {column!r} has {int(counts.max())} missing value(s) (first on line "
                        f"{first}); fill or drop them")


def feature_plan(frame: pd.DataFrame, path: Path) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """Numeric feature columns and the one-hot categories of text columns."""
    numeric, categories = [], {}
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values):
            numeric.append(str(column))
            continue
        distinct = sorted(map(str, values.unique()))
        if len(distinct) > MAX_CATEGORIES:
            raise DataError(f"{path}: column {column!r} is text with {len(distinct)} distinct values (at most "
                            f"{MAX_CATEGORIES} are one-hot encoded); drop it or convert it to numbers")
        categories[str(column)] = tuple(distinct)
    if not numeric and not categories:
        raise DataError(f"{path} has no feature columns besides the target")
    return tuple(numeric), categories


def feature_names(numeric: tuple[str, ...], categories: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    return numeric + tuple(f"{column}={value}" for column, values in categories.items() for value in values)


def encode_rows(frame: pd.DataFrame, spec: Preprocessing) -> np.ndarray:
    """Rows of raw feature columns as the model's float32 inputs, with the stored statistics and categories."""
    missing = [c for c in (*spec.numeric_columns, *spec.categories) if c not in frame.columns]
    if missing:
        raise DataError(f"missing feature column(s) {', '.join(missing)}; expected "
                        f"{', '.join((*spec.numeric_columns, *spec.categories))}")
    try:
        numeric = frame[list(spec.numeric_columns)].to_numpy(np.float64)
    except ValueError as error:
        raise DataError(f"a numeric feature holds text ({error})") from None
    if np.isnan(numeric).any():
        raise DataError("a numeric feature is missing (NaN)")
    parts = [(numeric - np.array(spec.mean)) / np.array(spec.std)]
    for column, values in spec.categories.items():
        text = frame[column].astype(str).to_numpy()
        parts.append(np.stack([text == value for value in values], axis=1).astype(np.float64))
    return np.concatenate(parts, axis=1).astype(np.float32)


def targets(values: pd.Series, task: str, path: Path, target: str) -> tuple[np.ndarray, tuple[str, ...]]:
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            raise DataError(f"{path}: target {target!r} is not numeric; a regression needs numbers "
                            "(or use --task classification)")
        return values.to_numpy(np.float32), ()
    names = tuple(sorted(map(str, values.unique())))
    if len(names) < 2:
        raise DataError(f"{path}: target {target!r} has a single value ({names[0]}); classification needs two "
                        "or more classes")
    lookup = {name: index for index, name in enumerate(names)}
    return np.array([lookup[v] for v in values.astype(str)], np.int32), names


def load_csv(path: str | Path, options: SourceOptions, report: Callable[[str], None] = lambda m: None) -> Dataset:
    """The CSV at ``path`` as a :class:`Dataset` (see the module docstring)."""
    path = Path(path).expanduser()
    frame = read_csv(path)
    columns = ", ".join(map(str, frame.columns))
    if not options.target:
        raise DataError(f"a CSV data set needs a target column (--target COLUMN); {path.name} has columns {columns}")
    for role, column in (("target", options.target), ("device column", options.device_column)):
        if column and column not in frame.columns:
            raise DataError(f"{path.name} has no {role} {column!r}; its columns are {columns}")
    check_missing(frame, path)
    task = infer_task(frame[options.target], options.task)
    y, class_names = targets(frame[options.target], task, path, options.target)
    features = frame.drop(columns=[c for c in (options.target, options.device_column) if c])
    numeric, categories = feature_plan(features, path)
    train, test = stratified_split(y, options.test_fraction, options.seed, stratify=task == "classification")
    values = features[list(numeric)].to_numpy(np.float64)[train]
    mean, std = values.mean(axis=0), values.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    spec = Preprocessing(
        kind="tabular", task=task, class_names=class_names, image_size=None, color="grey",
        target=options.target, feature_names=feature_names(numeric, categories), numeric_columns=numeric,
        mean=tuple(map(float, mean)), std=tuple(map(float, std)), categories=categories,
        note="numeric columns standardised with the training split's mean and standard deviation "
             "(additive sums: each device can compute its share, the server aggregates); "
             + (f"text columns one-hot: {', '.join(categories)}" if categories else "no text columns"),
    )
    x = encode_rows(features, spec)
    groups, group_names = None, ()
    if options.device_column:
        device_values = frame[options.device_column].astype(str).to_numpy()[train]
        group_names = tuple(sorted(set(device_values)))
        groups = np.array([group_names.index(v) for v in device_values], np.int32)
    report(f"{path.name}: {len(frame)} rows, {len(spec.feature_names)} features, {task} of {options.target!r}")
    return Dataset(path.stem, x[train], y[train], x[test], y[test], class_names, task, spec, groups, group_names)


def encode_csv(path: str | Path, spec: Preprocessing, report: Callable[[str], None] = lambda m: None
               ) -> tuple[np.ndarray, np.ndarray]:
    """A device's own CSV encoded with the federation's ``spec``: its statistics, categories and classes.

    A device standardises with the federation's mean and deviation (not its
    own), so the same row means the same input everywhere.
    """
    path = Path(path).expanduser()
    frame = read_csv(path)
    if spec.target not in frame.columns:
        raise DataError(f"{path.name} has no target {spec.target!r}; its columns are "
                        f"{', '.join(map(str, frame.columns))}")
    check_missing(frame, path)
    x = encode_rows(frame, spec)
    values = frame[spec.target]
    if spec.task == "regression":
        y, _ = targets(values, "regression", path, spec.target)
    else:
        text = values.astype(str)
        unknown = sorted(set(text) - set(spec.class_names))
        if unknown:
            raise DataError(f"{path.name}: target value(s) {', '.join(unknown[:5])} are not classes of this "
                            f"federation ({', '.join(spec.class_names)})")
        y = np.array([spec.class_names.index(v) for v in text], np.int32)
    report(f"{path.name}: {len(y)} rows encoded with the federation's preprocessing")
    return x, y
