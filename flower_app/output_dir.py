"""The one server-side folder that run-config file names may point into.

A run config comes from whoever submits the run (``flwr run --run-config``),
so the keys that name files the ServerApp writes or reads (``results-file``,
``weights-file``, ``deactivated-file``) must not reach anywhere else on the
server. They are resolved inside the ServerApp's output folder,
``$FL_FLOWER_OUTPUT_DIR`` (default ``$FLWR_HOME/fl-watch-output``, else
``~/.flwr/fl-watch-output``): a relative name lands inside it, an absolute path
is accepted only if it already lies inside it, and anything that resolves
outside (``..``, a symbolic link out, another absolute path) is refused with
:class:`OutsideOutputDir`, a one-line reason.

``runs-dir`` (the run store the ServerApp records into) names a folder and is
confined the same way to the server's runs folder, :func:`runs_root`:
``$FL_FLOWER_RUNS_DIR``, else ``$FL_RUNS_DIR`` (the run store the engine's CLI
and the dashboard use), else ``runs`` inside the output folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

OUTPUT_DIR_VARIABLE = "FL_FLOWER_OUTPUT_DIR"
RUNS_DIR_VARIABLE = "FL_FLOWER_RUNS_DIR"
FILE_KEYS = ("results-file", "weights-file", "deactivated-file")
FOLDER_KEYS = ("runs-dir",)


class OutsideOutputDir(ValueError):
    """A run-config file name that resolves outside the server's output folder."""


def output_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The ServerApp's output folder (resolved; not created)."""
    environ = os.environ if environ is None else environ
    configured = environ.get(OUTPUT_DIR_VARIABLE, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    home = environ.get("FLWR_HOME", "").strip()
    return (Path(home).expanduser() if home else Path.home() / ".flwr").resolve() / "fl-watch-output"


def runs_root(environ: Mapping[str, str] | None = None) -> Path:
    """The folder ``runs-dir`` must lie in (resolved; not created)."""
    environ = os.environ if environ is None else environ
    for variable in (RUNS_DIR_VARIABLE, "FL_RUNS_DIR"):
        configured = environ.get(variable, "").strip()
        if configured:
            return Path(configured).expanduser().resolve()
    return output_dir(environ) / "runs"


def confined_path(key: str, value: str, folder: Path) -> Path:
    """``value`` (run-config ``key``, a file name) as a path inside ``folder``, or :class:`OutsideOutputDir`."""
    folder = folder.resolve()
    path = (folder / Path(value).expanduser()).resolve()  # an absolute value replaces ``folder``
    if not path.is_relative_to(folder) or path == folder:
        raise OutsideOutputDir(
            f"run-config {key}={value!r} is outside the server's output folder {folder} "
            f"(set by {OUTPUT_DIR_VARIABLE}); give a file name inside it"
        )
    return path


def confined_folder(key: str, value: str, folder: Path) -> Path:
    """``value`` (run-config ``key``, a folder) as ``folder`` itself or a folder inside it, or
    :class:`OutsideOutputDir`."""
    folder = folder.resolve()
    path = (folder / Path(value).expanduser()).resolve()
    if not path.is_relative_to(folder):
        raise OutsideOutputDir(
            f"run-config {key}={value!r} is outside the server's runs folder {folder} "
            f"(set by {RUNS_DIR_VARIABLE} or FL_RUNS_DIR); give a folder inside it"
        )
    return path
