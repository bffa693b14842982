"""Model registry: CNN, MLP, linear and MobileNetV2 built for the data's shape, plus user-given builders.

A builder takes the input shape and the number of outputs (classes, or 1 for a
regression) and returns an uncompiled Keras model that outputs logits (no
softmax) or the predicted value: the engine applies the loss and the softmax.

``--model path/to/model.py`` loads a user's own builder: the file must define
``build(input_shape, num_classes)`` and may define ``TASK`` ("classification" or
"regression", the tasks it supports) and ``DEFAULTS`` (training defaults such as
``{"optimizer": "sgd", "learning_rate": 0.05}``). Loading it RUNS THAT FILE'S
CODE: only ever pass a file you wrote or trust, from this machine.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras

from engine.model_defaults import ModelError, TrainingDefaults, is_model_file

ModelFactory = Callable[[tuple[int, ...], int], keras.Model]
MOBILENET_MIN_SIDE = 32


def _needs_image(name: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        raise ModelError(f"model {name!r} needs images; this data has {input_shape[0]} features per sample "
                         "(use mlp or linear)")


def small_cnn(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Two conv/pool blocks and a dense layer (~422k parameters at 28x28, ~90% on Fashion-MNIST).

    Works for any image side from 8 pixels and any channel count. ``same``
    padding keeps every pixel's border in play: at 28x28 the dense layer sees
    7x7x64 features instead of the 5x5x64 ``valid`` padding leaves, which took
    10 IID devices from 0.881 / 0.877 to 0.893 / 0.891 after 5 rounds (seeds 0 / 1;
    README "Learning quality"), for ~1.9x the bytes per round.
    """
    _needs_image("cnn", input_shape)
    if min(input_shape[:2]) < 8:
        raise ModelError(f"the CNN needs images of at least 8x8 pixels, got {input_shape[0]}x{input_shape[1]}")
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(num_classes),
        ],
        name="cnn",
    )


def mlp(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Two hidden layers of 200 units (the MLP of McMahan et al.), on any input flattened."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(200, activation="relu"),
            keras.layers.Dense(200, activation="relu"),
            keras.layers.Dense(num_classes),
        ],
        name="mlp",
    )


def linear(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """y = W x + b: linear regression with one output, logistic (softmax) regression with several."""
    return keras.Sequential(
        [keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(num_classes)], name="linear"
    )


def mobilenet_v2(input_shape: tuple[int, ...], num_classes: int, weights: str | None = None) -> keras.Model:
    """Keras's MobileNetV2 for colour images, from scratch or from a local weights file (never downloaded).

    ``weights`` is a path to ImageNet-style weights *without* the top
    (``include_top=False``); a new classification layer is added on top.
    """
    _needs_image("mobilenetv2", input_shape)
    if input_shape[-1] != 3 or min(input_shape[:2]) < MOBILENET_MIN_SIDE:
        raise ModelError(f"MobileNetV2 needs colour images of at least {MOBILENET_MIN_SIDE}x{MOBILENET_MIN_SIDE}; "
                         f"got {input_shape} (use --color rgb and --image-size {MOBILENET_MIN_SIDE} or more)")
    if weights is not None and not Path(weights).is_file():
        raise ModelError(f"MobileNetV2 weights file {weights} does not exist (nothing is downloaded)")
    base = keras.applications.MobileNetV2(
        input_shape=tuple(input_shape), include_top=False, weights=weights, pooling="avg", alpha=1.0
    )
    inputs = keras.Input(tuple(input_shape))
    outputs = keras.layers.Dense(num_classes)(base(inputs * 2.0 - 1.0))  # MobileNetV2 expects [-1, 1]
    return keras.Model(inputs, outputs, name="mobilenetv2")


@dataclass(frozen=True)
class UserModel:
    """A builder loaded from the user's Python file, with its declared task and defaults."""

    build: ModelFactory
    task: str | None
    defaults: TrainingDefaults | None


def load_model_file(path: str) -> UserModel:
    """Import ``path`` (runs its code: only a local file the user named) and read build/TASK/DEFAULTS."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelError(f"model file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"user_model_{abs(hash(str(file.resolve())))}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's code may raise anything
        raise ModelError(f"model file {path} failed to load ({type(error).__name__}: {error})") from None
    build = getattr(module, "build", None)
    if not callable(build):
        raise ModelError(f"model file {path} must define build(input_shape, num_classes) returning a keras.Model")
    task = getattr(module, "TASK", None)
    raw = getattr(module, "DEFAULTS", None)
    try:
        defaults = TrainingDefaults(**{"optimizer": "adam", "learning_rate": 0.002, **raw}) if isinstance(raw, dict) else None
    except TypeError as error:
        raise ModelError(f"model file {path}: DEFAULTS has an unknown key ({error})") from None
    return UserModel(build, task, defaults)


class ModelRegistry:
    """Named model builders; a registry instance per application, never global state."""

    def __init__(self, mobilenet_weights: str | None = None) -> None:
        self._factories: dict[str, ModelFactory] = {
            "cnn": small_cnn,
            "mlp": mlp,
            "linear": linear,
            "mobilenetv2": lambda shape, classes: mobilenet_v2(shape, classes, mobilenet_weights),
        }

    def register(self, name: str, factory: ModelFactory) -> None:
        """Make ``factory`` available under ``name`` (replacing any previous one)."""
        self._factories[name] = factory

    def names(self) -> tuple[str, ...]:
        return tuple(self._factories)

    def knows(self, name: str) -> bool:
        return name in self._factories or is_model_file(name)

    def build(self, name: str, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
        if is_model_file(name) and name not in self._factories:
            self.register(name, load_model_file(name).build)
        if name not in self._factories:
            raise KeyError(f"unknown model {name!r}; choose one of {', '.join(self._factories)} or a .py file")
        model = self._factories[name](tuple(input_shape), num_classes)
        if not isinstance(model, keras.Model):
            raise ModelError(f"model {name!r} did not return a keras.Model (got {type(model).__name__})")
        return model
