"""NumPy ``.npz`` files as data sets: ``x_train``, ``y_train`` and optionally ``x_test``, ``y_test``.

uint8 arrays of shape (n, h, w) or (n, h, w, 3) are images; anything else is
used as float32 features as given. Pickled objects are never loaded.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from data.datasets import Dataset
from data.errors import DataError
from data.spec import Preprocessing, SourceOptions
from data.split import stratified_split
from data.tabular import infer_task


def read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f".npz file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise DataError(f"{path} is not a readable .npz file ({type(error).__name__}: {error})") from None
    missing = [key for key in ("x_train", "y_train") if key not in arrays]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; it holds {', '.join(arrays) or 'nothing'}")
    return arrays


def inputs(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.dtype == np.uint8 and (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] in (1, 3))):
        return x[..., 0] if x.ndim == 4 and x.shape[-1] == 1 else x
    if not np.issubdtype(x.dtype, np.number) or x.ndim < 2:
        raise DataError(f"{path}: {key} must be numbers of shape (samples, ...), got {x.dtype} {x.shape}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: {key} holds NaN or infinite values")
    return x


def load_npz(path: str | Path, options: SourceOptions, report: Callable[[str], None] = lambda m: None) -> Dataset:
    path = Path(path).expanduser()
    arrays = read_npz(path)
    x_train, y_raw = inputs(arrays["x_train"], path, "x_train"), arrays["y_train"].reshape(-1)
    if len(x_train) != len(y_raw):
        raise DataError(f"{path}: {len(x_train)} x_train rows but {len(y_raw)} y_train values")
    has_test = "x_test" in arrays and "y_test" in arrays
    y_all = np.concatenate([y_raw, arrays["y_test"].reshape(-1)]) if has_test else y_raw
    task = infer_task(pd.Series(y_all), options.task)
    if task == "classification":
        values = np.unique(y_all)
        if len(values) < 2:
            raise DataError(f"{path}: y_train has a single value; classification needs two or more classes")
        names, encode = tuple(map(str, values)), (lambda y: np.searchsorted(values, y).astype(np.int32))
    else:
        names, encode = (), (lambda y: y.astype(np.float32))
    if has_test:
        x_test, y_test = inputs(arrays["x_test"], path, "x_test"), encode(arrays["y_test"].reshape(-1))
        y_train = encode(y_raw)
    else:
        y = encode(y_raw)
        train, test = stratified_split(y, options.test_fraction, options.seed, task == "classification")
        x_train, y_train, x_test, y_test = x_train[train], y[train], x_train[test], y[test]
    image = x_train.dtype == np.uint8
    spec = Preprocessing(
        kind="image" if image else "array", task=task, class_names=names,
        image_size=int(x_train.shape[1]) if image else None,
        color="rgb" if image and x_train.ndim == 4 else "grey",
        note="uint8 images scaled to [0, 1]" if image else "arrays used as given (float32)",
    )
    report(f"{path.name}: {len(y_train)} training and {len(y_test)} test samples, {task}")
    return Dataset(path.stem, x_train, y_train, x_test, y_test, names, task, spec)


def encode_npz(path: str | Path, spec: Preprocessing, report: Callable[[str], None] = lambda m: None
               ) -> tuple[np.ndarray, np.ndarray]:
    """A device's own ``.npz`` (all its samples, train and test) with the federation's classes."""
    path = Path(path).expanduser()
    arrays = read_npz(path)
    x = inputs(arrays["x_train"], path, "x_train")
    y = arrays["y_train"].reshape(-1)
    if "x_test" in arrays and "y_test" in arrays:
        x = np.concatenate([x, inputs(arrays["x_test"], path, "x_test")])
        y = np.concatenate([y, arrays["y_test"].reshape(-1)])
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} samples but {len(y)} targets")
    if spec.task == "regression":
        return x, y.astype(np.float32)
    names = [str(value) for value in y]
    unknown = sorted(set(names) - set(spec.class_names))
    if unknown:
        raise DataError(f"{path.name}: target value(s) {', '.join(unknown[:5])} are not classes of this federation "
                        f"({', '.join(spec.class_names)})")
    report(f"{path.name}: {len(y)} samples")
    return x, np.array([spec.class_names.index(n) for n in names], np.int32)
