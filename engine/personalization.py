"""The server side of personalisation (``--personalize``): what devices are told, what the server aggregates.

Each device builds a model of its own next to the global one (see
:mod:`devices.personal`) and reports its accuracy on its own held-out data;
the round's ``personalized_accuracy`` is their mean. Under ``fedper`` the
devices send the *body* only (every weight array but the last Dense layer's),
so the server decodes and aggregates the body and keeps its own head (the
initial one: it is what a device that never trained starts from).

No TensorFlow here: the configuration imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from devices.messages import Personalization, Weights
from devices.personal_weights import merge_weights, split_weights

if TYPE_CHECKING:
    import keras

    from engine.config import FederationConfig

PERSONALIZATIONS = ("none", "finetune", "fedper", "ditto")


def personalization_problems(config: FederationConfig) -> list[str]:
    """Combinations of ``--personalize`` with other settings that cannot work, in words a user can act on."""
    found = []
    mode = config.personalize
    if mode == "fedper" and config.strategy == "scaffold":
        found.append("fedper keeps each device's head out of the update, and SCAFFOLD's control variates cover the "
                     "whole model: use another strategy with fedper")
    from engine.strategies import STRATEGIES

    if mode != "none" and config.strategy in STRATEGIES and STRATEGIES[config.strategy].asynchronous:
        found.append(f"{config.strategy}'s asynchronous loop does not run personalisation yet: use a synchronous "
                     "strategy (e.g. fedavg) with --personalize")
    if mode == "ditto" and config.optimizer == "sgd" and config.learning_rate * config.ditto_lambda >= 2:
        found.append(f"ditto's proximal step diverges with SGD when learning rate x lambda >= 2 (got "
                     f"{config.learning_rate:g} x {config.ditto_lambda:g}): lower --ditto-lambda or --lr")
    if mode != "none" and config.local_test_fraction == 0:
        found.append(f"{mode} is judged on each device's local test split; the local test share must be above 0")
    return found


def head_positions(model: keras.Model, layers: int = 1) -> tuple[int, ...]:
    """Where the weights of ``model``'s last ``layers`` Dense layers sit in ``model.weights``: FedPer's head.

    Raises ValueError when the model has no such layer, or nothing below it to share.
    """
    dense = [layer for layer in model.layers if type(layer).__name__ == "Dense"]
    if len(dense) < layers:
        raise ValueError(f"fedper keeps the last Dense layer on each device; model {model.name!r} has none")
    positions = {id(w): i for i, w in enumerate(model.weights)}
    head = tuple(sorted(positions[id(w)] for layer in dense[-layers:] for w in layer.weights))
    if len(head) == len(model.weights):
        raise ValueError(f"fedper shares every layer but the last Dense one, and model {model.name!r} has nothing "
                         "else (use the MLP or the CNN)")
    return head


def device_settings(config: FederationConfig, head: tuple[int, ...] = ()) -> Personalization | None:
    """What each device is told to do for its own model (None: no personalisation)."""
    if config.personalize == "none":
        return None
    return Personalization(config.personalize, steps=config.finetune_steps, lam=config.ditto_lambda,
                           head=head if config.personalize == "fedper" else ())


@dataclass(frozen=True)
class SharedPart:
    """Which weights the devices send and the server aggregates: all, or FedPer's body (``head`` left out)."""

    head: tuple[int, ...] = ()

    def of(self, weights: Weights) -> Weights:
        return split_weights(weights, self.head)[0] if self.head else weights

    def merged(self, shared: Weights, weights: Weights) -> Weights:
        """The full model: the aggregated ``shared`` part under ``weights``' own head."""
        return merge_weights(shared, split_weights(weights, self.head)[1], self.head) if self.head else shared


def training_note(config: FederationConfig) -> str:
    """How personalisation trains, for the run's training note ('' without it)."""
    if config.personalize == "none":
        return ""
    what = {"finetune": f"each device fine-tunes the global model for {config.finetune_steps} steps",
            "fedper": "each device keeps its own last Dense layer and sends the rest",
            "ditto": f"each device also trains its own model toward the global one (lambda {config.ditto_lambda:g})"}
    return f"Personalisation {config.personalize}: {what[config.personalize]}, on the stacks too where they train."


def mean_finite(values: Sequence[float]) -> float | None:
    """The mean of the finite values (None when there is none: no device reported one)."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def worst_share_mean(values: Sequence[float], share: float = 0.1) -> float | None:
    """Mean of the worst ``share`` of the finite values (at least one): the fairness figure of personalisation."""
    finite = sorted(float(v) for v in values if v is not None and np.isfinite(v))
    if not finite:
        return None
    count = max(1, int(np.ceil(share * len(finite) - 1e-9)))
    return float(np.mean(finite[:count]))


def finite_or_none(value: float) -> float | None:
    """A per-device figure as recorded: None where the device reported none (NaN), which JSON and SQL keep."""
    return float(value) if value is not None and np.isfinite(value) else None
