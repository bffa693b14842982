"""Export the engine's global model (a weight list and a model name) for use elsewhere.

The engine's models output logits; every exported model ends in a Softmax layer
and so outputs class probabilities. Its input is float32 images in [0, 1] of
shape (batch, 28, 28, 1), exactly what ``data.preprocess.preprocess_upload``
produces (plus a channel axis).

Formats (:data:`FORMATS`):

``keras``        a ``.keras`` file, reloaded with ``keras.saving.load_model``.
``saved_model``  a TensorFlow SavedModel directory (Keras 3 ``model.export``), with a
                 ``serve`` endpoint and a ``serving_default`` signature, batch size free.
``tflite``       a float32 TensorFlow Lite flatbuffer, batch size fixed at 1.
``tflite-int8``  full-integer quantised TensorFlow Lite for microcontrollers: int8
                 weights, activations, input and output, batch size fixed at 1. The
                 input is quantised with scale 1/255 and zero point -128 (a uint8
                 pixel ``p`` becomes ``p - 128``), the softmax output with scale 1/256
                 and zero point -128; ``engine.predict.TFLiteClassifier`` applies both.

Every write is atomic: the model is written under a temporary name in the
destination's folder and then renamed over the destination, so a reader sees the
old export or the new one, never half a file, and a failed export leaves no
debris. (A SavedModel directory cannot be swapped in one system call: the old
directory is renamed aside, the new one renamed in, then the old one deleted.)
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from data.prepare import write_sidecar
from data.spec import Preprocessing
from engine.export_paths import FORMATS, ExportError, check_destination, check_format, default_filename  # noqa: F401
from engine.models import ModelRegistry

REPRESENTATIVE_SAMPLES = 200
"""Images the int8 converter calibrates activation ranges on."""

def build_inference_model(
    model_name: str,
    weights: Sequence[np.ndarray],
    input_shape: tuple[int, ...] = (28, 28, 1),
    num_classes: int = 10,
    registry: ModelRegistry | None = None,
    task: str = "classification",
) -> keras.Model:
    """The registry's ``model_name`` with ``weights`` loaded, followed by a Softmax layer.

    ``weights`` are in ``model.weights`` order (as ``ModelReplica.get_weights``
    gives them). The result takes float32 images in [0, 1] of shape
    (None, *input_shape) and outputs probabilities (None, num_classes).
    """
    base = (registry or ModelRegistry()).build(model_name, tuple(input_shape), num_classes)
    try:
        base.set_weights([np.asarray(w) for w in weights])
    except ValueError as error:
        raise ValueError(f"the weights do not fit model {model_name!r}: {error}") from None
    image = keras.Input(tuple(input_shape), dtype="float32", name="image")
    if task == "regression":  # the predicted value, as it is
        return keras.Model(image, base(image), name=f"{Path(model_name).stem}_inference")
    probabilities = keras.layers.Softmax(name="probabilities")(base(image))
    return keras.Model(image, probabilities, name=f"{Path(model_name).stem}_inference")


def export_keras(model: keras.Model, path: str | os.PathLike) -> Path:
    """Save ``model`` as a ``.keras`` file at ``path`` (atomically)."""
    path = Path(path)
    check_destination("keras", path)
    temporary = _temporary_sibling(path, suffix=".keras")  # Keras insists on the suffix
    try:
        keras.saving.save_model(model, temporary)
        _fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    return path


def export_saved_model(model: keras.Model, directory: str | os.PathLike) -> Path:
    """Export ``model`` as a TensorFlow SavedModel directory (``model.export``), replacing any old one."""
    directory = Path(directory)
    temporary = _temporary_sibling(directory)
    try:
        model.export(
            str(temporary),
            format="tf_saved_model",
            verbose=False,
            input_signature=[_image_spec(model, batch=None)],
        )
        _replace_directory(temporary, directory)
    except BaseException:
        _remove(temporary)
        raise
    return directory


def export_tflite(
    model: keras.Model,
    path: str | os.PathLike,
    int8: bool = False,
    representative_images: np.ndarray | None = None,
) -> Path:
    """Convert ``model`` to TensorFlow Lite at ``path`` (atomically); batch size fixed at 1.

    Float32 by default. With ``int8=True``: full-integer quantisation (int8
    input and output, as microcontrollers run it), calibrated on up to
    :data:`REPRESENTATIVE_SAMPLES` of ``representative_images`` (training images,
    uint8 in [0, 255] or float in [0, 1], shape (n, 28, 28) or (n, 28, 28, 1)).
    """
    path = Path(path)
    calibration = None
    if int8:
        if representative_images is None:
            raise ValueError("int8 quantisation needs representative_images (a few hundred training images)")
        calibration = _calibration_images(representative_images, model.input_shape[1:])
    flatbuffer = _convert_to_tflite(model, calibration)
    temporary = _temporary_sibling(path, suffix=".tflite")
    try:
        with open(temporary, "xb") as handle:
            handle.write(flatbuffer)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    return path


def export_model(
    model_name: str,
    weights: Sequence[np.ndarray],
    format: str,
    destination: str | os.PathLike,
    representative_images: np.ndarray | None = None,
    *,
    input_shape: tuple[int, ...] = (28, 28, 1),
    num_classes: int = 10,
    registry: ModelRegistry | None = None,
    preprocessing: Preprocessing | None = None,
) -> Path:
    """Build the inference model of ``model_name`` with ``weights`` and export it as ``format``.

    ``destination`` is the file (``.keras`` / ``.tflite``) or the SavedModel
    directory to write; ``tflite-int8`` needs ``representative_images``.
    ``preprocessing`` (the data set's own) sets the input shape, outputs and
    task, and is written next to the model as ``DESTINATION.preprocessing.json``
    so ``engine.predict`` prepares inputs the same way.
    """
    check_destination(format, destination)
    Path(destination).parent.mkdir(parents=True, exist_ok=True)
    task = "classification"
    if preprocessing is not None:
        input_shape, task = preprocessing.input_shape, preprocessing.task
        num_classes = len(preprocessing.class_names) if task == "classification" else 1
    model = build_inference_model(model_name, weights, input_shape, num_classes, registry, task)
    if format == "keras":
        path = export_keras(model, destination)
    elif format == "saved_model":
        path = export_saved_model(model, destination)
    else:
        path = export_tflite(model, destination, int8=format == "tflite-int8",
                            representative_images=representative_images)
    if preprocessing is not None:
        write_sidecar(path, preprocessing)
    return path


# -- helpers ---------------------------------------------------------------------------


def _image_spec(model: keras.Model, batch: int | None) -> tf.TensorSpec:
    return tf.TensorSpec((batch, *model.input_shape[1:]), tf.float32, name="image")


def _calibration_images(images: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """Up to REPRESENTATIVE_SAMPLES images, evenly spread over ``images``, as float32 in [0, 1]."""
    images = np.asarray(images)
    if len(images) == 0:
        raise ValueError("representative_images is empty")
    chosen = images[np.linspace(0, len(images) - 1, min(REPRESENTATIVE_SAMPLES, len(images))).astype(int)]
    values = chosen.astype(np.float32)
    if images.dtype.kind in "ui":
        values /= 255.0
    try:
        return values.reshape((len(values), *image_shape))
    except ValueError:
        raise ValueError(
            f"representative_images of shape {images.shape} do not fit the model input {tuple(image_shape)}"
        ) from None


def _convert_to_tflite(model: keras.Model, calibration: np.ndarray | None) -> bytes:
    """TFLite flatbuffer of ``model`` (via a batch-1 SavedModel); int8 when ``calibration`` is given.

    ``TFLiteConverter.from_concrete_functions`` / ``from_keras_model`` leave Keras 3
    variables as resource variables (READ_VARIABLE ops, no weights frozen in), which
    int8 calibration cannot run; the SavedModel route, as Keras's own LiteRT export
    does, freezes them. A static batch of 1 keeps dynamic-shape ops (Shape, Pack)
    out of the graph: microcontroller runtimes want fully static shapes.
    """
    with tempfile.TemporaryDirectory(prefix="tflite-export-") as folder:
        saved_model = os.path.join(folder, "saved_model")
        model.export(saved_model, format="tf_saved_model", verbose=False, input_signature=[_image_spec(model, 1)])
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        if calibration is not None:

            def representative_dataset():
                for image in calibration:
                    yield [image[None, ...]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return converter.convert()


def _temporary_sibling(path: Path, suffix: str = "") -> Path:
    """A fresh, unused name next to ``path`` (same folder, so a rename is atomic)."""
    return path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp{suffix}"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _replace_directory(new: Path, destination: Path) -> None:
    """Rename ``new`` to ``destination``; an existing destination is moved aside, then deleted."""
    if not os.path.lexists(destination):
        os.rename(new, destination)
        return
    old = _temporary_sibling(destination, suffix=".old")
    os.rename(destination, old)
    try:
        os.rename(new, destination)
    except BaseException:
        os.rename(old, destination)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    """Delete a file or directory tree if it exists, ignoring errors (cleanup only)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass
