"""Model registry: built-in CNN and MLP for 28x28x1 images, plus user-registered builders.

A builder takes the input shape and the number of classes and returns an
uncompiled Keras model that outputs logits (no softmax): the engine applies
the loss and the softmax itself.
"""

from __future__ import annotations

from typing import Callable

import keras

ModelFactory = Callable[[tuple[int, int, int], int], keras.Model]


def small_cnn(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Two conv/pool blocks and a dense layer: about 225k parameters, ~90% on Fashion-MNIST."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(num_classes),
        ],
        name="cnn",
    )


def mlp(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Two hidden layers of 200 units (the MLP of McMahan et al.)."""
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


class ModelRegistry:
    """Named model builders; a registry instance per application, never global state."""

    def __init__(self) -> None:
        self._factories: dict[str, ModelFactory] = {"cnn": small_cnn, "mlp": mlp}

    def register(self, name: str, factory: ModelFactory) -> None:
        """Make ``factory`` available under ``name`` (replacing any previous one)."""
        self._factories[name] = factory

    def names(self) -> tuple[str, ...]:
        return tuple(self._factories)

    def build(self, name: str, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
        if name not in self._factories:
            raise KeyError(f"unknown model {name!r}; choose one of {', '.join(self._factories)}")
        return self._factories[name](input_shape, num_classes)

