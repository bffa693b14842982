"""Decode an upload safely: size and pixel limits before any pixel is decoded, EXIF orientation, first frame.

Every failure is an :class:`ImageError` whose message is meant for the user. Only Pillow and NumPy.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from typing import Final

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_UPLOAD_BYTES: Final = 20 * 1024 * 1024
"""Largest accepted upload, in bytes."""

MAX_PIXELS: Final = 40_000_000
"""Largest accepted image area (width x height), checked before decoding pixels."""

ACCEPTED_FORMATS: Final = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
"""Pillow format names ``load_image`` will open ("JPEG" also opens multi-picture MPO photos)."""

WORK_SIDE: Final = 2048
"""Uploads are shrunk while decoding (JPEG DCT scaling, then box reduction) to at most this longest side.

Far above the 28x28 model input and the 512-pixel object mask, so the result is the same, while a
40-megapixel photo needs its 8-bit decode and a 2048-pixel copy instead of several float copies.
"""

class ImageError(ValueError):
    """An upload that cannot be used as an image; the message is meant for the user."""


def read_limited(path: str | os.PathLike, limit: int = MAX_UPLOAD_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; never reads more than ``limit + 1``.

    Raises :class:`ImageError` for devices, pipes and folders (``/dev/zero`` would never end) and
    for files over the limit, and ``OSError`` when the file cannot be opened.
    """
    with open(path, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ImageError("This is not a regular file (a device, pipe or folder); give an image file.")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ImageError(f"The file is too large (over {limit / 2**20:.0f} MB); the limit is {limit // 2**20} MB.")
    return data


def load_image(data: bytes) -> Image.Image:
    """Decode an uploaded file completely, rejecting anything unsafe or broken.

    Accepts PNG, JPEG, WebP, BMP and GIF (first frame) and applies the EXIF
    orientation, so a phone photo comes out the way it is displayed. Every
    failure is an :class:`ImageError` with a message fit for the user; the image
    area is checked against :data:`MAX_PIXELS` before any pixel is decoded, so a
    decompression bomb costs nothing.
    """
    return decode_shrunk(data, max_side=None)[0]


def decode_shrunk(data: bytes, max_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`load_image`, shrunk while decoding to at most ``max_side``; also the full upright size."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"load_image expects bytes, not {type(data).__name__}")
    size = len(data)
    if size == 0:
        raise ImageError("The file is empty.")
    if size > MAX_UPLOAD_BYTES:
        raise ImageError(
            f"The file is too large ({size / 2**20:.1f} MB); "
            f"the limit is {MAX_UPLOAD_BYTES // 2**20} MB."
        )
    with warnings.catch_warnings():
        # Local only: Pillow's global Image.MAX_IMAGE_PIXELS is left untouched.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except UnidentifiedImageError:
            raise ImageError(
                "The file is not a recognised image (PNG, JPEG, WebP, BMP or GIF)."
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(
                "The image has far too many pixels to be processed safely "
                f"(the limit is {MAX_PIXELS // 1_000_000} megapixels)."
            ) from None
        except Exception as error:  # noqa: BLE001 - Pillow plugins raise many types
            raise ImageError(
                f"The image is truncated or corrupt and cannot be decoded ({error})."
            ) from None
        _check_dimensions(image.size)
        full_size = _upright_size(image)
        try:
            image.seek(0)  # animated GIF / WebP: the first frame
            if max_side is not None and image.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale
                image.draft(None, _scaled_size(image.size, max_side))
            image.load()
        except Exception as error:  # noqa: BLE001 - OSError, SyntaxError, zlib.error...
            raise ImageError(
                f"The image is truncated or corrupt and cannot be decoded ({error})."
            ) from None
    if max_side is not None:
        image = _reduced(image, max_side)
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - bad EXIF must not reject a good picture
        upright = image.copy()
    _check_dimensions(upright.size)
    return upright, full_size


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: EXIF orientations 5-8 swap the axes."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - bad EXIF is ignored, as by exif_transpose
        orientation = 1
    width, height = image.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _scaled_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    factor = max(size) / max_side
    return (max(1, math.ceil(size[0] / factor)), max(1, math.ceil(size[1] / factor))) if factor > 1 else size


def _reduced(image: Image.Image, max_side: int) -> Image.Image:
    """Box-average ``image`` by an integer factor so its longest side is at most ``max_side``."""
    factor = math.ceil(max(image.size) / max_side)
    if factor <= 1:
        return image
    if image.mode.startswith("I;16"):  # Pillow cannot reduce 16-bit images directly
        wide = np.asarray(image.convert("I").reduce(factor), dtype=np.int32)
        return Image.fromarray(np.clip(wide, 0, 65535).astype(np.uint16))
    if image.mode in ("1", "P", "PA"):  # palettes and bilevel cannot be averaged
        image = image.convert("RGBA" if image.has_transparency_data else "L" if image.mode == "1" else "RGB")
    reduced = image.reduce(factor)
    reduced.info = image.info  # keeps the EXIF orientation and transparency for what follows
    return reduced


def _check_dimensions(size: tuple[int, int]) -> None:
    """Reject zero-sized and absurdly large images, before their pixels are decoded."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"The image has no pixels ({width}x{height}).")
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"The image is too large ({width}x{height} = {width * height / 1e6:.0f} megapixels); "
            f"the limit is {MAX_PIXELS // 1_000_000} megapixels."
        )
