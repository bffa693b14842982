"""Store an uploaded data set (a ``.zip`` of class folders or a ``.csv``) in a folder, safely.

A zip is extracted member by member: absolute paths, ``..`` components and
links are refused, and the total size and member count are bounded before
anything is written, so an archive cannot escape the folder or fill the disk.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path, PurePosixPath

from data.errors import DataError

MAX_UPLOAD_BYTES = 200 * 1024 * 1024
MAX_EXTRACTED_BYTES = 1024 * 1024 * 1024
MAX_MEMBERS = 100_000


def _safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise DataError(f"the archive has {len(members)} files; at most {MAX_MEMBERS} are accepted")
    if sum(m.file_size for m in members) > MAX_EXTRACTED_BYTES:
        raise DataError(f"the archive unpacks to more than {MAX_EXTRACTED_BYTES // 2**20} MB")
    for member in members:
        parts = PurePosixPath(member.filename).parts
        if member.filename.startswith("/") or ".." in parts or (member.external_attr >> 16) & 0o170000 == 0o120000:
            raise DataError(f"the archive holds an unsafe path {member.filename!r}")
    return [m for m in members if not m.is_dir() and not PurePosixPath(m.filename).name.startswith(".")
            and "__MACOSX" not in PurePosixPath(m.filename).parts]


def data_root(folder: Path) -> Path:
    """The folder itself, or its single sub-folder when the archive wrapped everything in one."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    inner = entries[0] if len(entries) == 1 and entries[0].is_dir() else None
    if inner is not None and not any(p.is_file() for p in inner.iterdir()):
        known = {"devices", "train", "test", "server"}
        if not ({p.name for p in folder.iterdir()} & known) and len([p for p in inner.iterdir() if p.is_dir()]) >= 1:
            return inner
    return folder


def save_upload(name: str, data: bytes, folder: Path) -> Path:
    """Write ``data`` (an upload called ``name``) under ``folder``; the path to use as the data set."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise DataError(f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
    digest = hashlib.sha256(data).hexdigest()[:16]
    suffix = Path(name).suffix.lower()
    if suffix in (".csv", ".npz"):
        target = folder / f"{digest}{suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target
    if suffix != ".zip":
        raise DataError(f"upload a .zip of class folders, a .csv or an .npz, not {name!r}")
    target = folder / digest
    if not target.is_dir():
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = _safe_members(archive)
                for member in members:
                    path = target / member.filename
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(archive.read(member))
        except zipfile.BadZipFile:
            raise DataError(f"{name} is not a readable zip archive") from None
    return data_root(target)
