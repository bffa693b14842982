"""Turn a user's input into the model's input with the data set's own preprocessing (prediction, export).

The preprocessing (:class:`data.spec.Preprocessing`) is stored as JSON next to
an exported model (``MODEL.preprocessing.json``) and in the run folder, so a
colour model gets colour inputs of its own size and a tabular model gets its
rows standardised with the training statistics. The built-in grey sets keep
the Fashion-MNIST upload pipeline of :mod:`data.preprocess` (inversion,
cropping to the object).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import DataError
from data.images import UnreadableImage, decode, to_grey
from data.spec import Preprocessing
from data.tabular import encode_rows

SIDECAR_SUFFIX = ".preprocessing.json"


def sidecar_path(model_path: str | os.PathLike) -> Path:
    return Path(str(model_path).rstrip("/") + SIDECAR_SUFFIX)


def write_sidecar(model_path: str | os.PathLike, spec: Preprocessing) -> Path:
    path = sidecar_path(model_path)
    path.write_text(spec.to_json())
    return path


def read_sidecar(model_path: str | os.PathLike) -> Preprocessing | None:
    """The preprocessing stored next to ``model_path``; None when there is none (a built-in grey model)."""
    path = sidecar_path(model_path)
    if not path.is_file():
        return None
    try:
        return Preprocessing.from_json(path.read_text())
    except (ValueError, TypeError, KeyError) as error:
        raise DataError(f"{path} is not a valid preprocessing file ({error})") from None


def image_input(data: bytes, spec: Preprocessing) -> np.ndarray:
    """An uploaded image as the model's float32 input in [0, 1]: (side, side, 3) colour or (side, side) grey."""
    try:
        rgb = decode(bytes(data), spec.image_size or 28)
    except UnreadableImage as reason:
        raise DataError(f"the image cannot be used: {reason}") from None
    pixels = rgb if spec.color == "rgb" else to_grey(rgb)
    return pixels.astype(np.float32) / 255.0


def table_input(rows: pd.DataFrame | bytes, spec: Preprocessing) -> np.ndarray:
    """Rows of feature columns (a frame or CSV bytes) as the model's standardised float32 inputs."""
    if isinstance(rows, (bytes, bytearray)):
        try:
            rows = pd.read_csv(io.BytesIO(rows))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
            raise DataError(f"the rows are not a readable CSV ({type(error).__name__})") from None
    return encode_rows(rows, spec)


def describe_output(values: np.ndarray, spec: Preprocessing, top: int = 1) -> list[dict]:
    """Per row: the top classes with probabilities, or the predicted value of a regression."""
    if spec.task == "regression":
        return [{"value": float(row[0])} for row in values]
    names = spec.class_names or tuple(str(i) for i in range(values.shape[-1]))
    return [
        {"predictions": [{"class": names[i], "index": int(i), "probability": round(float(row[i]), 6)}
                         for i in np.argsort(-row, kind="stable")[:top]]}
        for row in values
    ]
