"""Classify image files with an exported model (see ``engine.export``), standalone.

    python -m engine.predict MODEL IMAGE [IMAGE ...] [--classes fashion-mnist|mnist] [--top 3] [--json]

MODEL is a ``.tflite`` file, a ``.keras`` file or a SavedModel directory. Each
image is preprocessed like an upload to the dashboard
(``data.preprocess.preprocess_upload``: a photo of a dark object on a light
background becomes a Fashion-MNIST-style 28x28 input) and classified; one line
per file is printed, ``file: class (probability)``. Exit status: 0 when every
image was classified, 1 when some could not be read, 2 when the model cannot be
loaded (or the command line is wrong).

TensorFlow and Keras are imported only when needed: a ``.tflite`` model runs
with the ``ai_edge_litert`` (or ``tflite_runtime``) interpreter when one is
installed, so a small device needs only that, NumPy and Pillow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from data.datasets import CLASS_NAMES, DATASET_NAMES
from data.preprocess import ImageError, preprocess_upload
from engine.cli_options import OneLineParser

KERAS_BATCH = 1024
"""Images per forward pass for the Keras and SavedModel classifiers."""


class UnknownModelError(ValueError):
    """The path exists but is not a .tflite file, a .keras file or a SavedModel directory."""


class Classifier(Protocol):
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (n, classes) of float32 images (n, 28, 28) in [0, 1]."""


def _as_batch(images: np.ndarray) -> np.ndarray:
    """Float32 images (n, h, w) or (n, h, w, c) as an (n, h, w, c) batch."""
    batch = np.asarray(images, dtype=np.float32)
    if batch.ndim == 3:
        return batch[..., None]
    if batch.ndim == 4:
        return batch
    raise ValueError(f"expected images of shape (n, height, width), got {batch.shape}")


def _tflite_interpreter_class():
    """LiteRT's interpreter if installed, else tflite_runtime's, else TensorFlow's (deprecated) one."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter
    except ImportError:
        pass
    import tensorflow as tf

    return tf.lite.Interpreter


class TFLiteClassifier:
    """A TensorFlow Lite model (float or int8-quantised) behind a float-in, probabilities-out ``predict``.

    Quantised models (int8 / uint8 input) get their input quantised with the
    input tensor's own parameters, ``q = clip(round(x / scale) + zero_point)``:
    for ``engine.export``'s int8 models scale = 1/255 and zero point = -128, so a
    pixel ``x = p / 255`` becomes exactly ``p - 128``. Quantised outputs are
    dequantised, ``(q - zero_point) * scale`` (softmax: scale 1/256, zero point
    -128), so probabilities come in steps of 1/256 and need not sum exactly to 1.
    A model with a fixed batch size (the exports use 1) is run batch by batch; a
    dynamic one is resized to the whole input.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        self.path = Path(path)
        # model_content, not model_path: only then does the interpreter verify the
        # flatbuffer; TensorFlow's crashes (SIGSEGV) on a truncated file given by path.
        data = self.path.read_bytes()
        with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice
            warnings.simplefilter("ignore")
            self._interpreter = _tflite_interpreter_class()(model_content=data, num_threads=num_threads)
        self._interpreter.allocate_tensors()
        (self._input,) = self._interpreter.get_input_details()
        (self._output,) = self._interpreter.get_output_details()
        signature = self._input.get("shape_signature", self._input["shape"])
        self._dynamic_batch = int(signature[0]) == -1
        self._batch_shape = tuple(int(side) for side in self._input["shape"])
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])
        self.input_quantization = tuple(self._input["quantization"])  # (scale, zero_point); (0.0, 0) if float
        self.output_quantization = tuple(self._output["quantization"])
        self.num_classes = int(self._output["shape"][-1])

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self._batch_shape[1:]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (n, classes) of float32 images (n, 28, 28) in [0, 1]."""
        batch = _as_batch(images)
        try:
            batch = batch.reshape((len(batch), *self.image_shape))
        except ValueError:
            raise ValueError(
                f"images of shape {batch.shape[1:]} do not fit the model input {self.image_shape}"
            ) from None
        if len(batch) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        if self._dynamic_batch:
            if self._batch_shape[0] != len(batch):
                self._interpreter.resize_tensor_input(self._input["index"], [len(batch), *self.image_shape])
                self._interpreter.allocate_tensors()
                self._batch_shape = (len(batch), *self.image_shape)
            return self._run(batch)
        size = self._batch_shape[0]
        results = []
        for start in range(0, len(batch), size):
            chunk = batch[start:start + size]
            padding = size - len(chunk)
            if padding:
                chunk = np.concatenate([chunk, np.zeros((padding, *self.image_shape), np.float32)])
            results.append(self._run(chunk)[: size - padding])
        return np.concatenate(results)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._input["index"], self._quantize(batch))
        self._interpreter.invoke()
        return self._dequantize(self._interpreter.get_tensor(self._output["index"]))

    def _quantize(self, batch: np.ndarray) -> np.ndarray:
        if self.input_dtype.kind == "f":
            return batch.astype(self.input_dtype)
        scale, zero_point = self.input_quantization
        if not scale:
            raise ValueError(f"{self.path}: integer input {self.input_dtype} without quantisation parameters")
        limits = np.iinfo(self.input_dtype)
        values = np.round(batch / scale) + zero_point
        return np.clip(values, limits.min, limits.max).astype(self.input_dtype)

    def _dequantize(self, values: np.ndarray) -> np.ndarray:
        if self.output_dtype.kind == "f":
            return np.array(values, dtype=np.float32)
        scale, zero_point = self.output_quantization
        return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


class KerasClassifier:
    """A ``.keras`` model file (loaded with ``keras.saving.load_model``)."""

    def __init__(self, path: str | os.PathLike):
        import keras

        self.path = Path(path)
        self.model = keras.saving.load_model(self.path, compile=False)
        self.num_classes = int(self.model.output_shape[-1])

    def predict(self, images: np.ndarray) -> np.ndarray:
        batch = _as_batch(images)
        if len(batch) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        return np.concatenate([
            np.asarray(self.model(batch[start:start + KERAS_BATCH], training=False))
            for start in range(0, len(batch), KERAS_BATCH)
        ])


class SavedModelClassifier:
    """A TensorFlow SavedModel directory (its ``serve`` endpoint, else ``serving_default``)."""

    def __init__(self, path: str | os.PathLike):
        import tensorflow as tf

        self.path = Path(path)
        self._tf = tf
        self._module = tf.saved_model.load(str(self.path))
        self._function = getattr(self._module, "serve", None) or self._module.signatures["serving_default"]
        self.num_classes = None  # known after the first prediction

    def predict(self, images: np.ndarray) -> np.ndarray:
        batch = _as_batch(images)
        results = []
        for start in range(0, len(batch), KERAS_BATCH):
            output = self._function(self._tf.constant(batch[start:start + KERAS_BATCH]))
            if isinstance(output, dict):  # a signature returns {name: tensor}
                (output,) = output.values()
            results.append(output.numpy())
        if not results:
            return np.zeros((0, self.num_classes or 0), np.float32)
        self.num_classes = results[0].shape[-1]
        return np.concatenate(results)


def load_classifier(path: str | os.PathLike) -> Classifier:
    """A classifier for a ``.tflite`` file, a ``.keras`` file or a SavedModel directory.

    Raises FileNotFoundError when ``path`` does not exist and UnknownModelError
    (a ValueError) when it is none of the three.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return SavedModelClassifier(path)
        raise UnknownModelError(f"{path} is a directory but not a TensorFlow SavedModel (no saved_model.pb)")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if path.suffix == ".tflite" or head[4:8] == b"TFL3":  # the flatbuffer file identifier
        return TFLiteClassifier(path)
    if path.suffix == ".keras" or head[:2] == b"PK":  # a .keras file is a zip archive
        return KerasClassifier(path)
    raise UnknownModelError(f"{path} is not a .tflite or .keras model file")


# -- command line ------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m engine.predict",
        description="Classify image files (PNG, JPEG, WebP, BMP, GIF) with an exported model: "
        "a .tflite file, a .keras file or a SavedModel directory.",
        epilog="Exit status: 0 all images classified, 1 some images could not be used, "
        "2 the model could not be loaded.",
    )
    parser.add_argument("model", metavar="MODEL", help="exported model: .tflite, .keras or a SavedModel directory")
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files to classify")
    parser.add_argument("--classes", choices=DATASET_NAMES, default="fashion-mnist",
                        help="data set the model was trained on, for the class names (default: fashion-mnist)")
    parser.add_argument("--top", type=_positive_int, default=1, metavar="N", help="show the N most likely classes (default: 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported
    class_names = CLASS_NAMES[args.classes]
    try:
        classifier = load_classifier(args.model)
    except (FileNotFoundError, UnknownModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - corrupt files raise anything from zipfile to flatbuffers
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: cannot load model {args.model}: {message}", file=sys.stderr)
        return 2

    results: list[dict] = []
    pixels: list[np.ndarray] = []
    for name in args.images:
        try:
            pixels.append(preprocess_upload(Path(name).read_bytes()).pixels)
            results.append({"file": name})
        except ImageError as error:
            results.append({"file": name, "error": str(error)})
        except OSError as error:
            results.append({"file": name, "error": f"cannot read the file ({error.strerror or error})."})

    if pixels:
        try:
            probabilities = classifier.predict(np.stack(pixels))
        except Exception as error:  # noqa: BLE001 - e.g. a model made for another input size
            print(f"error: the model cannot classify 28x28 images: {error}", file=sys.stderr)
            return 2
        if probabilities.shape[-1] != len(class_names):
            print(f"error: the model has {probabilities.shape[-1]} outputs but {args.classes} has "
                  f"{len(class_names)} classes", file=sys.stderr)
            return 2
        top = min(args.top, len(class_names))
        rows = iter(probabilities)
        for result in results:
            if "error" not in result:
                row = next(rows)
                result["predictions"] = [
                    {"class": class_names[index], "index": int(index), "probability": round(float(row[index]), 6)}
                    for index in np.argsort(-row, kind="stable")[:top]
                ]

    if args.json:
        print(json.dumps({"model": str(args.model), "classes": args.classes, "results": results}, indent=2))
    else:
        for result in results:
            if "error" in result:
                print(f"{result['file']}: error: {result['error']}", file=sys.stderr)
            else:
                shown = ", ".join(f"{p['class']} ({p['probability']:.3f})" for p in result["predictions"])
                print(f"{result['file']}: {shown}")
    return 1 if any("error" in result for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
