"""Tests for data.preprocess: uploads of every kind become Fashion-MNIST-like input.

All images are made with Pillow while the tests run; nothing binary is committed.
The round-trip test needs the Fashion-MNIST IDX files, found through $FL_DATA_DIR
(default: ../shared/datasets next to the project) and skipped when absent.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from data.datasets import DATA_DIR_ENV, Dataset, find_local_folder, load_dataset
from data.preprocess import (
    MAX_PIXELS,
    MAX_UPLOAD_BYTES,
    ImageError,
    PreprocessedImage,
    load_image,
    preprocess_upload,
    render_on_background,
    to_grayscale,
    to_model_input,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WHITE = (255, 255, 255)
DARK = (40, 40, 40)
ROUND_TRIP_IMAGES = 200


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def fashion_mnist() -> Dataset:
    """The real Fashion-MNIST data, from $FL_DATA_DIR or ../shared/datasets."""
    root = os.environ.get(DATA_DIR_ENV) or str(PROJECT_ROOT / ".." / "shared" / "datasets")
    if find_local_folder("fashion-mnist", root) is None:
        pytest.skip(f"Fashion-MNIST IDX files not found under {root} (set {DATA_DIR_ENV})")
    return load_dataset("fashion-mnist", data_dir=root)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def product_photo(
    size: tuple[int, int] = (60, 40),
    box: tuple[int, int, int, int] = (10, 10, 50, 30),
    background: tuple[int, ...] = WHITE,
    colour: tuple[int, ...] = DARK,
    mode: str = "RGB",
) -> Image.Image:
    """A plain rectangle ``box`` (inclusive corners) of ``colour`` on ``background``."""
    image = Image.new(mode, size, background)
    ImageDraw.Draw(image).rectangle(box, fill=colour)
    return image


def extent(pixels: np.ndarray, threshold: float = 0.5) -> tuple[int, int]:
    """(height, width) of the bounding box of pixels above ``threshold``."""
    rows = np.flatnonzero((pixels > threshold).any(axis=1))
    cols = np.flatnonzero((pixels > threshold).any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(pixels.shape)
    total = pixels.sum()
    return float((rows * pixels).sum() / total), float((cols * pixels).sum() / total)


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid 8x8 PNG whose IHDR (with a correct CRC) claims ``width`` x ``height``."""
    raw = encode(Image.new("L", (8, 8), 255), "PNG")
    # signature (8) | length (4) | b"IHDR" + 13 data bytes | CRC (4) | ...
    chunk = bytearray(raw[12:29])
    chunk[4:8] = width.to_bytes(4, "big")
    chunk[8:12] = height.to_bytes(4, "big")
    return raw[:12] + bytes(chunk) + zlib.crc32(chunk).to_bytes(4, "big") + raw[33:]


def assert_valid_input(result: PreprocessedImage) -> None:
    assert result.pixels.shape == (28, 28)
    assert result.pixels.dtype == np.float32
    assert result.pixels.min() >= 0.0
    assert result.pixels.max() <= 1.0


# --------------------------------------------------------------------------- real data


def test_round_trip_of_rendered_fashion_mnist_photos(fashion_mnist: Dataset) -> None:
    """Fashion-MNIST images rendered as big dark-on-white JPEG photos come back as themselves."""
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(fashion_mnist.x_test), ROUND_TRIP_IMAGES, replace=False)
    errors = []
    for index in chosen:
        original = fashion_mnist.x_test[index]
        photo = render_on_background(original, scale=10)
        assert photo.mode == "RGB"
        assert photo.size == (360, 360)
        result = preprocess_upload(encode(photo, "JPEG", quality=90))
        assert_valid_input(result)
        assert result.inverted
        assert result.original_size == (360, 360)
        errors.append(np.abs(result.pixels - original / 255.0).mean())
    # Measured: mean 0.027, worst 0.152 (images Fashion-MNIST itself framed off-centre).
    assert np.mean(errors) < 0.04
    assert np.max(errors) < 0.2


def test_model_input_of_a_fashion_mnist_image_is_nearly_itself(fashion_mnist: Dataset) -> None:
    images = fashion_mnist.x_test[:ROUND_TRIP_IMAGES]
    errors = [np.abs(to_model_input(image / 255.0) - image / 255.0).mean() for image in images]
    assert np.median(errors) < 0.001  # most are reproduced exactly
    assert np.mean(errors) < 0.02


def test_render_on_background_makes_a_dark_on_light_photo() -> None:
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 10:18] = 255
    photo = render_on_background(image, scale=5, background=(250, 240, 230))
    assert photo.mode == "RGB"
    assert photo.size == (28 * 5 + 40, 28 * 5 + 40)
    assert photo.getpixel((0, 0)) == (250, 240, 230)
    assert photo.getpixel((20 + 14 * 5, 20 + 14 * 5)) == (0, 0, 0)
    gray = render_on_background(image.astype(np.float32) / 255.0, scale=3, rgb=False, margin=0)
    assert gray.mode == "L"
    assert gray.size == (84, 84)
    assert np.array_equal(np.asarray(gray)[::3, ::3], 255 - image)


# --------------------------------------------------------------------------- formats and modes


def test_transparent_png_is_treated_as_on_white_and_centred() -> None:
    image = Image.new("RGBA", (120, 80), (0, 0, 0, 0))  # transparent *black*
    ImageDraw.Draw(image).ellipse((5, 5, 45, 35), fill=(20, 30, 120, 255))  # off-centre
    result = preprocess_upload(encode(image, "PNG"))
    assert_valid_input(result)
    assert result.original_mode == "RGBA"
    assert result.inverted
    assert result.pixels.max() == pytest.approx(1.0)
    row, col = centre_of_mass(result.pixels)
    assert abs(row - 13.5) < 1.0
    assert abs(col - 13.5) < 1.0
    assert extent(result.pixels)[1] >= 26  # wide ellipse fills the width
    assert to_grayscale(image)[0, 0] == pytest.approx(1.0)  # transparent -> white


def _palette(image: Image.Image) -> Image.Image:
    return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)


def _sixteen_bit(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)


def _cut_out(image: Image.Image) -> Image.Image:
    """The object on a transparent (black) background instead of white."""
    rgba = np.asarray(image.convert("RGBA")).copy()
    rgba[(rgba[..., :3] == 255).all(axis=-1)] = 0
    return Image.fromarray(rgba)


@pytest.mark.parametrize(
    ("fmt", "convert", "params", "mode"),
    [
        ("JPEG", lambda im: im.convert("CMYK"), {"quality": 95}, "CMYK"),
        ("GIF", _palette, {}, "P"),
        ("PNG", _palette, {}, "P"),
        ("PNG", _sixteen_bit, {}, "I;16"),
        ("PNG", lambda im: im.convert("LA"), {}, "LA"),
        ("PNG", lambda im: im.convert("L"), {}, "L"),
        ("WEBP", lambda im: im, {"quality": 90}, "RGB"),
        ("WEBP", _cut_out, {"lossless": True}, "RGBA"),
        ("PNG", _cut_out, {}, "RGBA"),
        ("BMP", lambda im: im, {}, "RGB"),
        ("JPEG", lambda im: im, {"quality": 90}, "RGB"),
    ],
    ids=["cmyk-jpeg", "gif", "palette-png", "16bit-png", "la-png", "l-png", "webp",
         "transparent-webp", "transparent-png", "bmp", "jpeg"],
)
def test_every_format_and_mode_gives_the_same_input(
    fmt: str,
    convert: Callable[[Image.Image], Image.Image],
    params: dict[str, object],
    mode: str,
) -> None:
    photo = product_photo()
    expected = to_model_input(to_grayscale(photo))
    result = preprocess_upload(encode(convert(photo), fmt, **params))
    assert_valid_input(result)
    assert result.original_mode == mode
    assert result.original_size == (60, 40)
    assert result.inverted
    assert np.abs(result.pixels - expected).mean() < 0.03


def test_palette_image_with_a_transparent_background_is_on_white() -> None:
    image = _palette(product_photo(background=(0, 200, 0)))  # green, made transparent
    background_index = image.getpixel((0, 0))
    for fmt in ("GIF", "PNG"):
        loaded = load_image(encode(image, fmt, transparency=background_index))
        gray = to_grayscale(loaded)
        assert gray[0, 0] == pytest.approx(1.0)
        assert gray[20, 30] == pytest.approx(40 / 255, abs=0.02)


def test_only_the_first_gif_frame_is_used() -> None:
    wide = product_photo(size=(60, 60), box=(5, 25, 55, 35))
    tall = product_photo(size=(60, 60), box=(25, 5, 35, 55))
    data = encode(wide, "GIF", save_all=True, append_images=[tall], duration=100)
    height, width = extent(preprocess_upload(data).pixels)
    assert width > 2 * height


@pytest.mark.parametrize(
    ("mode", "array"),
    [
        ("1", np.array([[1, 1, 1], [1, 0, 1]], dtype=bool)),
        ("I", np.array([[65535, 65535, 65535], [65535, 0, 65535]], dtype=np.int32)),
        ("F", np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]], dtype=np.float32)),
    ],
)
def test_to_grayscale_scales_other_modes(mode: str, array: np.ndarray) -> None:
    image = Image.fromarray(array)
    assert image.mode == mode
    gray = to_grayscale(image)
    assert gray.dtype == np.float32
    assert np.array_equal(gray, np.array([[1, 1, 1], [1, 0, 1]], dtype=np.float32))


def test_exif_orientation_is_applied() -> None:
    wide_bar = product_photo(size=(300, 200), box=(30, 85, 270, 115), colour=(0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = encode(wide_bar, "JPEG", quality=90, exif=exif.tobytes())
    assert load_image(data).size == (200, 300)
    result = preprocess_upload(data)
    assert result.original_size == (200, 300)
    height, width = extent(result.pixels)
    assert height == 28
    assert width < 6
    height, width = extent(preprocess_upload(encode(wide_bar, "JPEG", quality=90)).pixels)
    assert width == 28
    assert height < 6


# --------------------------------------------------------------------------- sizes and contents


@pytest.mark.parametrize("colour", [0, 255])
def test_one_pixel_image(colour: int) -> None:
    result = preprocess_upload(encode(Image.new("L", (1, 1), colour), "PNG"))
    assert_valid_input(result)
    assert result.pixels.max() == 0.0  # nothing stands out from the "background"


def test_three_by_two_image() -> None:
    pixels = np.array([[255, 255, 255], [255, 0, 255]], dtype=np.uint8)
    result = preprocess_upload(encode(Image.fromarray(pixels), "PNG"))
    assert_valid_input(result)
    assert result.inverted
    assert result.pixels.max() == pytest.approx(1.0)


def test_large_allowed_photo() -> None:
    photo = Image.new("RGB", (4000, 3000), (245, 245, 240))
    ImageDraw.Draw(photo).ellipse((1000, 500, 2000, 2500), fill=(60, 40, 30))  # tall ellipse
    result = preprocess_upload(encode(photo, "JPEG", quality=85))
    assert_valid_input(result)
    assert result.original_size == (4000, 3000)
    assert result.inverted
    height, width = extent(result.pixels)
    assert height >= 27
    assert 12 <= width <= 16
    assert abs(centre_of_mass(result.pixels)[1] - 13.5) < 1.0


def test_light_object_on_dark_background_is_not_inverted() -> None:
    photo = product_photo(size=(80, 80), box=(20, 10, 60, 70), background=(10, 10, 10),
                          colour=(70, 70, 70))
    result = preprocess_upload(encode(photo, "PNG"))
    assert_valid_input(result)
    assert not result.inverted
    assert result.pixels.max() == pytest.approx(1.0)
    assert extent(result.pixels) == (28, 19)  # 40x60 box, longest side to 28


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0)])
def test_blank_image_gives_an_empty_input(fmt: str, colour: tuple[int, int, int]) -> None:
    result = preprocess_upload(encode(Image.new("RGB", (200, 150), colour), fmt))
    assert_valid_input(result)
    assert result.pixels.max() < 0.05


def test_a_speck_of_noise_on_white_is_still_blank() -> None:
    pixels = np.full((300, 300), 255, np.uint8)
    pixels[40, 250] = 0
    assert preprocess_upload(encode(Image.fromarray(pixels), "PNG")).pixels.max() < 0.05


def test_pad_fraction_leaves_a_margin() -> None:
    gray = to_grayscale(product_photo())
    padded = to_model_input(gray, size=28, pad_fraction=0.1)  # 3 px each side
    assert padded.shape == (28, 28)
    assert extent(padded)[1] == 22
    assert to_model_input(gray, size=64).shape == (64, 64)


def test_to_model_input_rejects_non_2d_arrays() -> None:
    with pytest.raises(ValueError, match="2-D"):
        to_model_input(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        to_model_input(np.zeros((0, 5), np.float32))


# --------------------------------------------------------------------------- bad uploads


def _noisy_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (np.random.default_rng(2).bytes(5000), "not a recognised image"),
        (b"name,price\nshirt,10\n" * 50, "not a recognised image"),
        (b"%PDF-1.4\n" + b"x" * 200, "not a recognised image"),
        (encode(product_photo(), "TIFF"), "not a recognised image"),
        (png_claiming_size(100_000, 100_000), "too many pixels"),  # Pillow's bomb error
        (png_claiming_size(10_000, 10_000), "too many pixels"),  # Pillow's bomb warning
        (png_claiming_size(8000, 6000), "too large"),  # 48 MP > MAX_PIXELS
        (png_claiming_size(0, 10), "not a recognised image"),
    ],
    ids=["empty", "random", "text", "pdf", "tiff", "bomb", "bomb-warning", "over-max-pixels",
         "zero-width"],
)
def test_bad_uploads_raise_a_helpful_image_error(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        preprocess_upload(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
def test_truncated_files_raise_image_error(fmt: str) -> None:
    data = encode(_noisy_image(), fmt)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


def test_too_many_bytes() -> None:
    data = encode(product_photo(), "PNG")
    oversized = data + bytes(MAX_UPLOAD_BYTES + 1 - len(data))
    with pytest.raises(ImageError, match=r"too large .*20 MB"):
        load_image(oversized)


def test_bomb_checks_leave_pillow_and_warnings_alone() -> None:
    limit = Image.MAX_IMAGE_PIXELS
    filters = list(warnings.filters)
    with pytest.raises(ImageError):
        load_image(png_claiming_size(10_000, 10_000))
    assert limit == Image.MAX_IMAGE_PIXELS
    assert warnings.filters == filters
    assert limit > MAX_PIXELS  # our check always runs before Pillow's would


def test_image_error_is_a_value_error_and_bytes_types_are_accepted() -> None:
    assert issubclass(ImageError, ValueError)
    data = encode(product_photo(), "PNG")
    assert load_image(bytearray(data)).size == load_image(memoryview(data)).size == (60, 40)
    with pytest.raises(TypeError):
        load_image("photo.png")  # type: ignore[arg-type]


def test_importing_preprocess_does_not_import_tensorflow() -> None:
    code = "import sys, data.preprocess; sys.exit(bool({'tensorflow', 'keras'} & set(sys.modules)))"
    completed = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=False)
    assert completed.returncode == 0
