"""Export formats, their file names and the checks on a destination: no TensorFlow needed.

The CLI refuses a bad ``--output`` and lists the formats before (and without)
importing TensorFlow; ``engine.export`` re-exports all of this.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import UserError

FORMATS = ("keras", "saved_model", "tflite", "tflite-int8")

SUFFIXES = {"keras": ".keras", "saved_model": "", "tflite": ".tflite", "tflite-int8": ".tflite"}


class ExportError(UserError, ValueError):
    """The export cannot be written where or as asked; the message says what is allowed."""


def check_format(format: str) -> None:
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")


def check_destination(format: str, destination: str | os.PathLike) -> None:
    """Refuse a destination that cannot hold ``format``, before any model is built."""
    check_format(format)
    path = Path(destination)
    if format == "keras" and path.suffix != ".keras":
        raise ExportError(f"a Keras model file must end in .keras, not {path.name!r}: "
                          f"e.g. {path.with_suffix('.keras').name}, or choose --format tflite / saved_model")
    if format != "saved_model" and path.is_dir():
        raise ExportError(f"{path} is a folder; give a file name for the {format} export")
    if format == "saved_model" and path.is_file():
        raise ExportError(f"{path} is a file; a SavedModel is a folder: give a folder name")


def default_filename(model_name: str, format: str) -> str:
    """A conventional file (or folder) name for an export, e.g. ``cnn-int8.tflite``."""
    check_format(format)
    stem = f"{model_name}-int8" if format == "tflite-int8" else model_name
    return f"{stem}_saved_model" if format == "saved_model" else stem + SUFFIXES[format]
