"""Decode image files for training with bounded memory: header checks first, then a reduced decode.

Pillow reads only the header on ``Image.open``; files larger than
:data:`MAX_FILE_BYTES` or :data:`MAX_PIXELS` are refused before any pixel is
decoded. JPEGs are decoded at a reduced scale (``Image.draft``) and other
formats shrunk with ``reduce`` steps on the way to the target side, so a big
photo never costs its full decoded size twice.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La"})


class UnreadableImage(ValueError):
    """One file that cannot be used as an image; the message says why."""


@dataclass(frozen=True)
class ImageHeader:
    path: Path
    size: tuple[int, int]  # (width, height)
    mode: str


def read_header(path: Path) -> ImageHeader:
    """Size and mode of an image file, read from its header only; UnreadableImage when it is not one."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise UnreadableImage(f"larger than {MAX_FILE_BYTES // 2**20} MB")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                size, mode = image.size, image.mode
    except UnreadableImage:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as error:
        raise UnreadableImage(f"not a readable image ({type(error).__name__})") from None
    if size[0] * size[1] > MAX_PIXELS or min(size) < 1:
        raise UnreadableImage(f"{size[0]}x{size[1]} pixels is outside 1..{MAX_PIXELS} pixels")
    return ImageHeader(path, size, mode)


def _center_square(size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def decode(source: Path | bytes, side: int) -> np.ndarray:
    """The image at ``source`` (a path, or a file's bytes) as uint8 RGB (side, side, 3): centre square,
    transparency on white. Bytes are checked against the size limits before decoding."""
    if isinstance(source, (bytes, bytearray)):
        if len(source) > MAX_FILE_BYTES or not source:
            raise UnreadableImage(f"{len(source)} bytes is outside 1 byte..{MAX_FILE_BYTES // 2**20} MB")
        source = io.BytesIO(source)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                with Image.open(source) as image:
                    if image.size[0] * image.size[1] > MAX_PIXELS:
                        raise UnreadableImage(f"{image.size[0]}x{image.size[1]} is more than {MAX_PIXELS} pixels")
            except UnreadableImage:
                raise
            except Exception as error:  # noqa: BLE001 - Pillow plugins raise many types
                raise UnreadableImage(f"not a readable image ({type(error).__name__})") from None
        source.seek(0)
    try:
        with Image.open(source) as image:
            image.draft("RGB", (side, side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that still covers side
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                values = np.asarray(image, np.float64)
                peak = 65535.0 if values.max() > 255 else 255.0
                image = Image.fromarray(np.clip(values / peak * 255.0, 0, 255).astype(np.uint8))
            image = image.convert("RGB")
            resized = image.resize((side, side), Image.Resampling.BILINEAR, box=_center_square(image.size),
                                   reducing_gap=2.0)
            return np.asarray(resized, np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImage(f"cannot be decoded ({type(error).__name__}: {error})") from None


def is_colour(images: np.ndarray, tolerance: float = 4.0) -> bool:
    """Whether RGB images (n, h, w, 3) carry colour: channels differing beyond JPEG noise on average."""
    if len(images) == 0:
        return False
    sample = images[:: max(1, len(images) // 500)].astype(np.int16)
    spread = np.abs(sample[..., 0] - sample[..., 1]) + np.abs(sample[..., 1] - sample[..., 2])
    return float(spread.mean()) > tolerance


def to_grey(images: np.ndarray) -> np.ndarray:
    """RGB uint8 (..., 3) to luminance uint8 (...), ITU-R 601 weights as Pillow's ``convert('L')``."""
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(images.astype(np.float32) @ weights), 0, 255).astype(np.uint8)


def default_side(headers: list[ImageHeader], cap: int = 64, floor: int = 8) -> int:
    """The median of the images' shorter sides, within [floor, cap]."""
    sides = [min(h.size) for h in headers]
    return int(min(cap, max(floor, np.median(sides)))) if sides else cap
