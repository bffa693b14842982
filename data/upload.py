"""An uploaded data set (a ``.zip`` of class folders or a ``.csv``) -> a folder or file source on disk.

Nothing in an upload is trusted: the archive is size-limited before it is
opened (:data:`MAX_UPLOAD_BYTES`, the dashboard's upload limit), every member
name is checked (no absolute paths, no ``..``, no drive letters, no links:
"zip slip"), the declared and the actually decompressed sizes are both capped
(:data:`MAX_EXTRACTED_BYTES`, :data:`MAX_MEMBERS`: zip bombs), and everything
is written below the given folder only (a per-session temporary folder in the
dashboard). The result is then an ordinary image-folder or CSV source, read
with the same checks as a path (:mod:`data.sources`).
"""

from __future__ import annotations

import re
import stat
import zipfile
from io import BytesIO
from pathlib import Path, PurePosixPath

from data.errors import DataError
from data.preprocess import MAX_UPLOAD_BYTES

MAX_EXTRACTED_BYTES = 256 * 2**20
MAX_MEMBERS = 50_000
CHUNK = 1 << 16
SKIPPED_PARTS = ("__MACOSX",)  # macOS archive metadata


def safe_name(name: str) -> str:
    """A file name without folders or odd characters (for a saved ``.csv``)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", PurePosixPath(name.replace("\\", "/")).name).strip("._")
    return base or "upload"


def member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The relative path a member may be written to; None to skip it (metadata); DataError when unsafe."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in path.parts:
        raise DataError(f"the archive's member {info.filename!r} points outside its folder; refused")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataError(f"the archive's member {info.filename!r} is a link; refused")
    if any(part in SKIPPED_PARTS or part.startswith(".") for part in path.parts):
        return None
    return path


def _copy_limited(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Decompress ``info`` to ``target``, at most ``budget`` bytes (a member may lie about its size)."""
    written = 0
    with archive.open(info) as source, target.open("wb") as sink:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > budget:
                raise DataError(f"the archive decompresses to more than {MAX_EXTRACTED_BYTES // 2**20} MB; refused")
            sink.write(chunk)
    return written


def extract_zip(data: bytes, folder: Path) -> Path:
    """Extract the archive ``data`` below ``folder`` (see the module docstring); the data set's root folder."""
    try:
        archive = zipfile.ZipFile(BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as error:
        raise DataError(f"the upload is not a readable .zip ({error})") from None
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) > MAX_MEMBERS:
            raise DataError(f"the archive holds {len(members)} files; at most {MAX_MEMBERS} are accepted")
        if sum(info.file_size for info in members) > MAX_EXTRACTED_BYTES:
            raise DataError(f"the archive decompresses to more than {MAX_EXTRACTED_BYTES // 2**20} MB; refused")
        root = folder / "dataset"
        budget = MAX_EXTRACTED_BYTES
        for info in members:
            path = member_path(info)
            if path is None:
                continue
            target = root.joinpath(*path.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                budget -= _copy_limited(archive, info, target, budget)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as error:
                raise DataError(f"the archive's member {info.filename!r} cannot be extracted ({error})") from None
    if not root.is_dir():
        raise DataError("the archive holds no files")
    return data_root(root)


def data_root(root: Path) -> Path:
    """The folder holding the class (or ``train``/``devices``) folders: wrapping folders are stepped into."""
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir():
            return root
        inner = [p for p in entries[0].iterdir() if not p.name.startswith(".")]
        if not inner or not all(p.is_dir() for p in inner):  # a single class folder of images: keep it
            return root
        root = entries[0]


def save_upload(name: str, data: bytes, folder: Path) -> Path:
    """An uploaded ``.zip`` (extracted) or ``.csv`` (saved) below ``folder``: the path to use as the data set."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise DataError(f"the upload is {len(data) / 2**20:.1f} MB; at most {MAX_UPLOAD_BYTES // 2**20} MB")
    folder.mkdir(parents=True, exist_ok=True)
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".zip":
        return extract_zip(data, folder)
    if suffix == ".csv":
        path = folder / safe_name(name)
        path.write_bytes(data)
        return path
    raise DataError(f"upload a .zip of class folders or a .csv, not {name!r}")
