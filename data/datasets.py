"""Load the image data sets the federation trains on.

A configured local folder (the ``data_dir`` argument or the ``FL_DATA_DIR``
environment variable) holding the standard IDX ``.gz`` files is read directly;
otherwise Keras downloads the data set as usual. When neither works,
:class:`DatasetUnavailableError` says what to do.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

DATA_DIR_ENV = "FL_DATA_DIR"

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}

CLASS_NAMES = {
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "mnist": tuple(str(digit) for digit in range(10)),
}

DATASET_NAMES = tuple(CLASS_NAMES)
TRAIN_SET_SIZES = {"fashion-mnist": 60_000, "mnist": 60_000}  # images in each standard training set


class DatasetUnavailableError(RuntimeError):
    """The data set is neither in a local folder nor downloadable."""


@dataclass(frozen=True)
class Dataset:
    """A labelled image data set: uint8 images (N, 28, 28) and int labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (*self.x_train.shape[1:3], 1)


def read_idx(path: Path) -> np.ndarray:
    """Read one gzip-compressed IDX file (images or labels) into a uint8 array."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    magic = int.from_bytes(raw[0:4], "big")
    if magic == 2051:
        count, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
        return np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols)
    if magic == 2049:
        count = int.from_bytes(raw[4:8], "big")
        return np.frombuffer(raw, np.uint8, offset=8)[:count]
    raise ValueError(f"{path} is not an IDX image or label file (magic number {magic})")


def find_local_folder(name: str, data_dir: str | os.PathLike | None) -> Path | None:
    """Return the folder holding ``name``'s IDX files, if the configured folder has them.

    ``data_dir`` may be the data set's own folder or a parent holding a
    sub-folder per data set (``fashion-mnist/``, ``mnist/``).
    """
    root = data_dir or os.environ.get(DATA_DIR_ENV)
    if not root:
        return None
    for candidate in (Path(root) / name, Path(root)):
        if all((candidate / file).is_file() for file in IDX_FILES.values()):
            return candidate
    return None


def _download_with_keras(name: str) -> tuple[np.ndarray, ...]:
    import keras  # deferred: a local folder needs no TensorFlow import

    loader = {"fashion-mnist": keras.datasets.fashion_mnist, "mnist": keras.datasets.mnist}[name]
    (x_train, y_train), (x_test, y_test) = loader.load_data()  # Keras prints a progress bar
    return x_train, y_train, x_test, y_test


def load_dataset(
    name: str = "fashion-mnist",
    data_dir: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> Dataset:
    """Load ``name`` from ``data_dir`` / ``$FL_DATA_DIR``, else download it with Keras."""
    if name not in CLASS_NAMES:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    report = progress or (lambda message: None)
    folder = find_local_folder(name, data_dir)
    if folder is not None:
        report(f"Reading {name} from {folder}")
        arrays = tuple(read_idx(folder / IDX_FILES[key]) for key in IDX_FILES)
    else:
        configured = data_dir or os.environ.get(DATA_DIR_ENV)
        if configured:
            report(f"{configured} has no {name} IDX files; downloading {name} with Keras")
        else:
            report(f"Downloading {name} with Keras (first use only)")
        try:
            arrays = _download_with_keras(name)
        except Exception as error:  # network errors come in many types
            raise DatasetUnavailableError(
                f"Could not load {name}: no local copy and the download failed ({error}). "
                f"Either connect to the internet so Keras can download it, or set "
                f"{DATA_DIR_ENV} (or the data folder setting) to a folder containing "
                f"{name}/ with the files {', '.join(IDX_FILES.values())}."
            ) from error
    x_train, y_train, x_test, y_test = arrays
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x_train, dtype=np.uint8),
        y_train=np.asarray(y_train, dtype=np.int32),
        x_test=np.ascontiguousarray(x_test, dtype=np.uint8),
        y_test=np.asarray(y_test, dtype=np.int32),
        class_names=CLASS_NAMES[name],
    )
