"""Prediction helpers without Streamlit: bytes or test images in, a classification or a user message out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from data.preprocess import NOTHING_TO_CLASSIFY, ImageError, PreprocessedImage, preprocess_upload

Predictor = Callable[[np.ndarray], np.ndarray]  # float images (n, 28, 28) in [0, 1] -> probabilities (n, classes)


@dataclass(frozen=True)
class Classification:
    """The model input and the global model's class probabilities for it."""

    pixels: np.ndarray  # (28, 28) float32 in [0, 1]: exactly what the model saw
    probabilities: np.ndarray  # (classes,)
    class_names: tuple[str, ...]

    @property
    def index(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def name(self) -> str:
        return self.class_names[self.index]

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.index])


@dataclass(frozen=True)
class UploadOutcome:
    """Either a classification of an upload or the message explaining why it cannot be used."""

    classification: Classification | None = None
    error: str | None = None
    inverted: bool = False  # the upload had a light background and was inverted
    original_size: tuple[int, int] | None = None
    preview: Image.Image | None = None  # what was read, as an 8-bit picture any browser shows


def classify_pixels(pixels: np.ndarray, predict: Predictor, class_names: Sequence[str]) -> Classification:
    """Run ``predict`` on one (28, 28) image in [0, 1]."""
    image = np.asarray(pixels, dtype=np.float32)
    probabilities = np.asarray(predict(image[None, ...]))[0]
    return Classification(image, probabilities, tuple(class_names))


def classify_upload(
    data: bytes,
    predict: Predictor,
    class_names: Sequence[str],
    preprocess: Callable[[bytes], PreprocessedImage] = preprocess_upload,
) -> UploadOutcome:
    """Preprocess uploaded bytes like Fashion-MNIST and classify them.

    Bad uploads give ``error`` instead, and so do blank ones (a white page, one
    pixel): their all-black input is not presented as a prediction.
    """
    try:
        image = preprocess(data)
    except ImageError as error:
        return UploadOutcome(error=str(error))
    if image.blank:
        return UploadOutcome(error=NOTHING_TO_CLASSIFY, original_size=image.original_size, preview=image.preview)
    return UploadOutcome(
        classification=classify_pixels(image.pixels, predict, class_names),
        inverted=image.inverted,
        original_size=image.original_size,
        preview=image.preview,
    )


def pixels_of_test_image(x_test: np.ndarray, index: int) -> np.ndarray:
    """A test-set image as model input: float32 in [0, 1]."""
    return np.asarray(x_test[index], dtype=np.float32) / 255.0


def enlarge(pixels: np.ndarray, scale: int = 7) -> Image.Image:
    """The 28x28 model input as a grayscale picture, ``scale`` times larger with hard pixel edges."""
    values = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
    image = Image.fromarray(np.rint(values * 255).astype(np.uint8))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
