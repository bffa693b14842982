"""Uploaded data sets (data.upload): zip slip, links, zip bombs and wrapping folders; then a normal source."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest

from data.errors import DataError
from data.sources import load_source
from data.upload import MAX_EXTRACTED_BYTES, save_upload
from tests.make_data import colour_only_folder


def zipped(entries: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def folder_zip(root) -> bytes:
    """Every file under ``root``, inside a wrapping folder as a zip of a folder usually has."""
    return zipped({f"hues/{p.relative_to(root).as_posix()}": p.read_bytes() for p in root.rglob("*") if p.is_file()}
                  | {"__MACOSX/hues/._red": b"metadata"})


def test_a_zip_of_class_folders_becomes_an_image_folder_source(tmp_path):
    root = colour_only_folder(tmp_path / "hues", per_class=4, side=8)
    path = save_upload("My hues.zip", folder_zip(root), tmp_path / "session")
    assert path == tmp_path / "session" / "dataset" / "hues"  # the wrapping folder is stepped into
    assert load_source(str(path)).class_names == ("green", "red")
    csv = save_upload("../../phones data.csv", b"x,y\n1,2\n2,4\n", tmp_path / "session")
    assert csv == tmp_path / "session" / "phones_data.csv" and csv.read_bytes().startswith(b"x,y")


@pytest.mark.parametrize("name", ["../outside.png", "/etc/outside.png", "a/../../outside.png", "C:/outside.png",
                                  "a\\..\\..\\outside.png"])
def test_members_outside_the_folder_are_refused(tmp_path, name):
    with pytest.raises(DataError, match="points outside its folder"):
        save_upload("evil.zip", zipped({"red/1.png": b"x", name: b"x"}), tmp_path / "session")
    assert not (tmp_path / "outside.png").exists() and not (tmp_path.parent / "outside.png").exists()


def test_links_bombs_and_non_archives_are_refused(tmp_path):
    with pytest.raises(DataError, match="is a link"):
        save_upload("links.zip", zipped({"red/1.png": b"x"}, links=("red/passwd",)), tmp_path / "a")
    bomb = zipped({"red/big.png": b"\0" * (MAX_EXTRACTED_BYTES + 1)})  # compresses to a few hundred kB
    assert len(bomb) < 2**20
    with pytest.raises(DataError, match="decompresses to more than"):
        save_upload("bomb.zip", bomb, tmp_path / "b")
    with pytest.raises(DataError, match="not a readable .zip"):
        save_upload("fake.zip", b"PK not really", tmp_path / "c")
    with pytest.raises(DataError, match="upload a .zip of class folders or a .csv"):
        save_upload("model.py", b"import os", tmp_path / "d")
    with pytest.raises(DataError, match="at most 20 MB"):
        save_upload("huge.csv", b"0" * (21 * 2**20), tmp_path / "e")
