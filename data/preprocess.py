"""Turn an uploaded product photo into a Fashion-MNIST-like model input.

Fashion-MNIST images are 28x28 grayscale pictures of a *light object on a black
background* whose longest side fills the whole frame. A user's upload is usually
the opposite: a colour photo of a dark-ish object on a light background, at any
size, in any common format, possibly rotated by EXIF metadata or transparent.

The pipeline is ``load_image`` (safe decoding, :mod:`data.image_decode`) -> ``to_grayscale`` (any mode to
floats in [0, 1], transparency composited onto white) -> ``to_model_input``
(invert if needed, crop to the object, pad to a square, resize to 28x28,
contrast-stretch). ``preprocess_upload`` runs all three. Only Pillow and NumPy
are used, so importing this module never pulls in TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image

from data.image_decode import (  # noqa: F401  (limits, errors and loading: also imported from here)
    MAX_PIXELS, MAX_UPLOAD_BYTES, WORK_SIDE, ImageError, decode_shrunk, load_image, read_limited,
)

PREVIEW_SIDE: Final = 512
"""Longest side of the preview of what was read (:attr:`PreprocessedImage.preview`)."""

PREVIEW_MAX_ASPECT: Final = 8
"""A preview thinner than 1:8 (a 30000x8 ribbon) is centred on a grey canvas of that aspect ratio."""

NOTHING_TO_CLASSIFY: Final = (
    "There is nothing to classify: the image is blank or uniform (no object stands out from its background)."
)

MODEL_SIZE: Final = 28
"""Side of a Fashion-MNIST image, in pixels."""

DEFAULT_PAD_FRACTION: Final = 0.0
"""Margin left on each side of the object, as a fraction of the output side.

Fashion-MNIST objects touch the frame: in the test set 98.9% of the images have
non-zero pixels along all 28 rows or all 28 columns (94% counting only pixels
above 5% of the peak), so the faithful default is no margin at all.
"""

LIGHT_BACKGROUND: Final = 0.5
"""A border median above this means "light background": the image gets inverted."""

FOREGROUND_FRACTION: Final = 0.05
"""A pixel belongs to the object when it exceeds this fraction of the peak contrast."""

MIN_CONTRAST: Final = 0.05
"""Peak contrast (against the background) below which the image is treated as blank."""

MASK_SIDE: Final = 512
"""The object mask is computed on a box-averaged copy no larger than this (speed, noise)."""


@dataclass(frozen=True)
class PreprocessedImage:
    """An upload turned into model input, plus what the UI may want to show about it."""

    original_size: tuple[int, int]  # (width, height) after EXIF rotation
    original_mode: str  # Pillow mode of the decoded upload, e.g. "RGB", "RGBA", "CMYK"
    inverted: bool  # True when the background was light and the image was inverted
    pixels: np.ndarray  # (28, 28) float32 in [0, 1], light object on black
    blank: bool = False  # nothing stood out from the background: there is no object to classify
    preview: Image.Image | None = None  # 8-bit RGB picture of what was read, at most PREVIEW_SIDE wide


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Convert an image of any common Pillow mode to a (H, W) float32 array in [0, 1].

    Transparent pixels are composited onto white, so a cut-out product on a
    transparent PNG behaves like one photographed on a white background.
    High-bit-depth modes (I;16, I, F) keep their precision.
    """
    mode = image.mode
    if mode.startswith("I;16"):
        return _scaled(np.asarray(image, dtype=np.float64), 65535.0)
    if mode in ("I", "F"):
        return _high_depth_to_unit(np.asarray(image, dtype=np.float64))
    if mode == "1":
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    if mode == "L" and "transparency" not in image.info:
        return np.asarray(image, dtype=np.float32) / 255.0
    has_alpha = image.has_transparency_data  # alpha band or a transparent colour / palette entry
    try:
        if has_alpha:  # "over" a white background, in Pillow's C code (fast on big photos)
            rgba = image.convert("RGBA")
            rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        else:
            rgb = image.convert("RGB")
        luma = rgb.convert("L")  # ITU-R 601-2 luma
    except (ValueError, OSError) as error:
        raise ImageError(f"Images of mode {mode} are not supported ({error}).") from None
    return np.asarray(luma, dtype=np.float32) / 255.0


def _scaled(values: np.ndarray, full_scale: float) -> np.ndarray:
    return np.clip(values / full_scale, 0.0, 1.0).astype(np.float32)


def _high_depth_to_unit(values: np.ndarray) -> np.ndarray:
    """Map 32-bit integer or float pixels to [0, 1], guessing their nominal range."""
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return values.astype(np.float32)
    if low >= 0.0 and high <= 255.0:
        return _scaled(values, 255.0)
    if low >= 0.0 and high <= 65535.0:
        return _scaled(values, 65535.0)
    span = high - low
    return ((values - low) / span).astype(np.float32)  # span > 0 here: high > 65535 >= low


def to_model_input(
    gray: np.ndarray, size: int = MODEL_SIZE, pad_fraction: float = DEFAULT_PAD_FRACTION
) -> np.ndarray:
    """Turn a grayscale picture into a Fashion-MNIST-style (size, size) float32 array.

    Fashion-MNIST shows a light object on black, centred, its longest side
    filling the frame. So: invert when the border is mostly light (median above
    0.5), subtract the background level, crop to the object's bounding box
    (pixels above 5% of the peak contrast, ignoring isolated specks; the whole
    picture if nothing stands out), resize with Lanczos (antialiased when
    shrinking) so the longest side spans ``size`` less a ``pad_fraction`` margin,
    centre on a black square as Fashion-MNIST does, and stretch the contrast to
    [0, 1]. A blank picture gives all zeros.
    """
    return _model_input(gray, size, pad_fraction)[0]


def _model_input(gray: np.ndarray, size: int, pad_fraction: float) -> tuple[np.ndarray, bool]:
    """:func:`to_model_input`, also saying whether the picture was inverted."""
    if size < 1:
        raise ValueError(f"size must be positive, not {size}")
    if not 0.0 <= pad_fraction < 1.0:
        raise ValueError(f"pad_fraction must be in [0, 1), not {pad_fraction}")
    pixels = np.asarray(gray, dtype=np.float32)
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"expected a non-empty 2-D grayscale array, got shape {pixels.shape}")
    pixels = np.clip(np.nan_to_num(pixels, nan=0.0), 0.0, 1.0)

    inverted = bool(np.median(_border(pixels)) > LIGHT_BACKGROUND)
    if inverted:
        pixels = 1.0 - pixels
    contrast = np.clip(pixels - np.median(_border(pixels)), 0.0, None)
    if float(contrast.max()) < MIN_CONTRAST:
        return np.zeros((size, size), dtype=np.float32), inverted

    top, bottom, left, right = _object_box(contrast)
    obj = Image.fromarray(np.ascontiguousarray(contrast[top:bottom, left:right]))
    # As Fashion-MNIST was made: longest side to the frame (less the margin),
    # then centred on a black square, an odd leftover pixel going top / left.
    inner = max(1, size - 2 * round(pad_fraction * size))
    longest = max(obj.size)
    width, height = (max(1, round(side * inner / longest)) for side in obj.size)
    resized = obj.resize((width, height), Image.Resampling.LANCZOS)
    square = Image.new("F", (size, size), 0.0)
    square.paste(resized, ((size - width + 1) // 2, (size - height + 1) // 2))
    result = np.clip(np.asarray(square, dtype=np.float32), 0.0, None)  # Lanczos rings below 0
    peak = float(result.max())
    if peak < MIN_CONTRAST:  # e.g. only a speck of noise, diluted by the resize
        return np.zeros((size, size), dtype=np.float32), inverted
    return np.clip(result / peak, 0.0, 1.0).astype(np.float32), inverted


def _border(pixels: np.ndarray) -> np.ndarray:
    """The outermost rows and columns of a 2-D array, flattened."""
    return np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])


def _object_box(contrast: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (top, bottom, left, right; end-exclusive) of the object in ``contrast``.

    The mask is computed on a box-averaged copy at most :data:`MASK_SIDE` pixels
    wide (fast, and averaging suppresses sensor/JPEG noise); isolated pixels are
    ignored. If nothing else stands out, the whole picture is the object.
    """
    height, width = contrast.shape
    factor = max(1, math.ceil(max(height, width) / MASK_SIDE))
    coarse = Image.fromarray(contrast)
    if factor > 1:
        coarse = coarse.reduce(factor)
    small = np.asarray(coarse, dtype=np.float32)
    mask = _without_specks(small > FOREGROUND_FRACTION * float(small.max()))
    if not mask.any():
        return 0, height, 0, width
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (
        rows[0] * factor,
        min(height, (rows[-1] + 1) * factor),
        cols[0] * factor,
        min(width, (cols[-1] + 1) * factor),
    )


def _without_specks(mask: np.ndarray) -> np.ndarray:
    """Drop mask pixels that have no 8-neighbour in the mask: specks of noise.

    Unlike a median filter this does not erode thin parts or pointed tips, so
    the bounding box of a real object stays exact even at 28x28.
    """
    padded = np.pad(mask, 1)
    height, width = mask.shape
    neighbours = sum(
        padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if dy or dx
    )
    return mask & (neighbours > 0)


def preprocess_upload(data: bytes) -> PreprocessedImage:
    """Decode an upload (shrunk to :data:`WORK_SIDE` while decoding) and turn it into model input.

    ``blank`` says when nothing stands out from the background (a white page, a
    single pixel): the all-black input must not be presented as a prediction.
    """
    image, full_size = decode_shrunk(data, max_side=WORK_SIDE)
    gray = to_grayscale(image)
    pixels, inverted = _model_input(gray, MODEL_SIZE, DEFAULT_PAD_FRACTION)
    return PreprocessedImage(
        original_size=full_size, original_mode=image.mode, inverted=inverted, pixels=pixels,
        blank=not pixels.any(), preview=preview_of(image, gray),
    )


def preview_of(image: Image.Image, gray: np.ndarray) -> Image.Image:
    """An 8-bit RGB picture of what was read, at most :data:`PREVIEW_SIDE` wide, never thinner than 1:8.

    Colour modes keep their colours (transparency over white); 16- and 32-bit
    images show their grayscale as read. Browsers need not display either.
    """
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        picture = Image.fromarray(np.rint(gray * 255).astype(np.uint8)).convert("RGB")
    elif image.has_transparency_data:
        rgba = image.convert("RGBA")
        picture = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    else:
        picture = image.convert("RGB")
    picture.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.BOX)
    width, height = picture.size
    canvas_size = (max(width, -(-height // PREVIEW_MAX_ASPECT)), max(height, -(-width // PREVIEW_MAX_ASPECT)))
    if canvas_size == picture.size:
        return picture
    canvas = Image.new("RGB", canvas_size, (128, 128, 128))
    canvas.paste(picture, ((canvas_size[0] - width) // 2, (canvas_size[1] - height) // 2))
    return canvas


def render_on_background(
    image28: np.ndarray,
    scale: int = 10,
    background: tuple[int, int, int] | int = (255, 255, 255),
    rgb: bool = True,
    *,
    margin: int | None = None,
) -> Image.Image:
    """Render a Fashion-MNIST image as a "product photo": a dark object on a light canvas.

    The light-on-black intensities are used as ink (object intensity 1 gives
    black, 0 gives ``background``), the picture is enlarged ``scale`` times
    and pasted in the middle of a canvas with ``margin`` pixels of background
    on every side (default: 4 source pixels' worth). Tests and the browser test
    use it to produce realistic uploads whose expected model input is known.
    """
    if scale < 1:
        raise ValueError(f"scale must be positive, not {scale}")
    values = np.asarray(image28)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {values.shape}")
    ink = values.astype(np.float32)
    if values.dtype.kind in "ui":
        ink /= 255.0
    ink = np.clip(ink, 0.0, 1.0)
    colour = np.array(
        background if isinstance(background, tuple) else (background,) * 3, dtype=np.float32
    )
    painted = np.rint((1.0 - ink)[..., None] * colour).astype(np.uint8)  # (H, W, 3)
    picture = Image.fromarray(painted)
    picture = picture.resize(
        (picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
    )
    pad = 4 * scale if margin is None else margin
    fill = tuple(int(channel) for channel in colour)
    canvas = Image.new("RGB", (picture.width + 2 * pad, picture.height + 2 * pad), fill)
    canvas.paste(picture, (pad, pad))
    return canvas if rgb else canvas.convert("L")
