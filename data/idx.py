"""Read and check the built-in data sets' IDX files (gzip-compressed, big-endian header, raw uint8).

Every way a file can be broken (not gzip, truncated, bad magic number, header
counts that do not match the payload, images of the wrong size, a checksum
that does not match ``MD5SUMS.txt``, or the other built-in data set under this
name) ends in one :class:`DataError` naming the file and what is wrong.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from data.errors import DataError

IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
IMAGE_SIDE = 28
MAX_IDX_BYTES = 200 * 1024 * 1024
"""Largest decompressed IDX file read (the Fashion-MNIST training images are 47 MB)."""

KNOWN_MD5 = {
    # MD5 of the decompressed official files (the published checksums)
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    },
}


def decompress(path: Path) -> bytes:
    """The decompressed bytes of ``path`` (at most :data:`MAX_IDX_BYTES`), or a DataError saying why not."""
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read(MAX_IDX_BYTES + 1)
    except (gzip.BadGzipFile, OSError) as error:
        raise DataError(f"{path} is not a gzip file ({error}); re-download it") from None
    except (EOFError, zlib.error):
        raise DataError(f"{path} is truncated (the gzip stream ends early); re-download it") from None
    if len(raw) > MAX_IDX_BYTES:
        raise DataError(f"{path} decompresses to more than {MAX_IDX_BYTES // 2**20} MB; not an IDX file of this size")
    return raw


def parse_idx(raw: bytes, path: Path) -> np.ndarray:
    """IDX bytes as uint8 images (n, 28, 28) or labels (n,), after checking the header against the payload."""
    if len(raw) < 8:
        raise DataError(f"{path} is empty or too short for an IDX header ({len(raw)} bytes)")
    magic, count = int.from_bytes(raw[0:4], "big"), int.from_bytes(raw[4:8], "big")
    if magic == IMAGE_MAGIC:
        if len(raw) < 16:
            raise DataError(f"{path} is too short for an IDX image header ({len(raw)} bytes)")
        rows, cols = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
        if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
            raise DataError(f"{path} holds {rows}x{cols} images; the built-in data sets are "
                            f"{IMAGE_SIDE}x{IMAGE_SIDE}")
        expected, offset, shape = count * rows * cols, 16, (count, rows, cols)
    elif magic == LABEL_MAGIC:
        expected, offset, shape = count, 8, (count,)
    else:
        raise DataError(f"{path} is not an IDX image or label file (magic number {magic}, expected "
                        f"{IMAGE_MAGIC} or {LABEL_MAGIC})")
    if len(raw) - offset != expected:
        raise DataError(f"{path}: the header announces {count} items ({expected} bytes) but the file holds "
                        f"{len(raw) - offset} bytes; it is truncated or corrupt")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(shape)


def read_md5sums(folder: Path) -> dict[str, str]:
    """``MD5SUMS.txt`` of ``folder`` as {file name: md5 of the decompressed content}; {} when absent."""
    listing = folder / "MD5SUMS.txt"
    if not listing.is_file():
        return {}
    sums = {}
    for line in listing.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 32:
            sums[parts[1]] = parts[0].lower()
    return sums


def check_identity(name: str, file: str, digest: str, path: Path, listed: dict[str, str]) -> None:
    """Refuse a file whose checksum contradicts ``MD5SUMS.txt`` or that belongs to the other built-in set."""
    if file in listed and listed[file] != digest:
        raise DataError(f"{path} does not match {path.parent / 'MD5SUMS.txt'} (md5 {digest}, listed "
                        f"{listed[file]}): the file is corrupt or was replaced")
    for other, sums in KNOWN_MD5.items():
        if other != name and sums.get(file) == digest:
            raise DataError(f"{path} is the {other} data set, not {name}: point the data folder at "
                            f"{name}'s files or choose --dataset {other}")


def read_checked(name: str, folder: Path, file: str) -> np.ndarray:
    """One IDX file of built-in data set ``name``: decompressed, identified and parsed."""
    path = folder / file
    raw = decompress(path)
    check_identity(name, file, hashlib.md5(raw).hexdigest(), path, read_md5sums(folder))
    return parse_idx(raw, path)


def check_pairs(name: str, arrays: dict[str, np.ndarray]) -> None:
    """Images and labels of each split must agree in count, and labels must be in 0..9."""
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{name}: the {split} image and label files are swapped or of the wrong kind")
        if len(images) != len(labels):
            raise DataError(f"{name}: {len(images)} {split} images but {len(labels)} {split} labels")
        if len(labels) and labels.max() > 9:
            raise DataError(f"{name}: {split} labels go up to {labels.max()}, expected 0..9")
