"""The strategy interface: how the server turns device updates into the next global model.

Modelled on Flower's strategies: one class per algorithm, hyper-parameters as
dataclass fields with defaults (the CLI and the dashboard list them from the
fields), server-side state kept on the instance, math in plain functions in
``engine.aggregation``.

Declare a hyper-parameter with :func:`hyperparameter`, which records its help
text and its allowed range; :meth:`Strategy.parameter_problems` checks values
against those ranges, and constructing a strategy with a bad value raises
``ValueError``. Server-side state goes in fields with ``init=False``; those are
not hyper-parameters.
"""

from __future__ import annotations

import math
from abc import ABC
from dataclasses import dataclass, field, fields
from numbers import Real
from typing import Any, ClassVar, Mapping, Sequence

from devices.messages import DeviceUpdate, Weights
from engine.aggregation import weighted_average
from engine.settings import FRACTION, NON_NEGATIVE, POSITIVE, Bounds


@dataclass(frozen=True)
class LocalOptions:
    """What a strategy asks of the devices' local training."""

    proximal_mu: float = 0.0  # FedProx: weight of (mu/2)||w - w_global||^2 in the local objective
    control_variates: bool = False  # SCAFFOLD: send the server control variate, correct the local gradients
    control_variate: Weights | None = None  # SCAFFOLD's server control variate c (None: still zero)


def hyperparameter(default: float, help: str, bounds: Bounds = Bounds(), integer: bool = False) -> Any:
    """A dataclass field for a hyper-parameter, with its help text, allowed range and whether it is a count."""
    return field(default=default, metadata={"help": help, "bounds": bounds, "integer": integer})


class AggregationSkipped(ValueError):
    """A strategy cannot aggregate this round's updates (e.g. too few for its robustness guarantee).

    The round keeps the global model unchanged and reports the message for every update it received.
    """


def state() -> Any:
    """A dataclass field for server-side state: not a hyper-parameter, starts as ``None``."""
    return field(default=None, init=False, repr=False, compare=False)


@dataclass
class Strategy(ABC):
    """One aggregation algorithm.

    The round loop calls :meth:`aggregate` once per round with the valid updates
    only; invalid ones have already been rejected and reported. Strategies whose
    result depends on the updates only through their sample-weighted mean set
    ``linear = True`` and implement :meth:`from_mean`; only those can run under
    secure aggregation, where the server never sees an individual update.
    """

    name: ClassVar[str] = "strategy"
    title: ClassVar[str] = "Strategy"
    summary: ClassVar[str] = ""
    linear: ClassVar[bool] = False
    needs_received_loss: ClassVar[bool] = False  # uses each device's loss of the model it received
    needs_sgd: ClassVar[bool] = False  # its device-side math assumes local SGD
    fresh_local_optimizer: ClassVar[bool] = False  # its math assumes each round's local optimizer starts fresh
    in_process_only: ClassVar[str] = ""  # why it cannot run on Flower yet ("" when it can)
    asynchronous: ClassVar[bool] = False  # runs on engine.async_rounds' schedule instead of synchronous rounds

    def __post_init__(self) -> None:
        problems = self.parameter_problems({f.name: getattr(self, f.name) for f in self._hyperparameter_fields()})
        if problems:
            raise ValueError("; ".join(problems))

    def local_options(self) -> LocalOptions:
        return LocalOptions()

    def bind(self, num_devices: int) -> None:
        """Told once how many devices the federation has (SCAFFOLD's server step needs it)."""

    def device_problems(self, devices_per_round: int) -> list[str]:
        """Why this strategy cannot work with ``devices_per_round`` updates a round, one message each; [] if fine."""
        return []

    def aggregate(self, server_round: int, global_weights: Weights, updates: Sequence[DeviceUpdate]) -> Weights:
        """Return the new global weights (default: :meth:`from_mean` of the weighted mean)."""
        mean = weighted_average([u.weights for u in updates], [u.num_samples for u in updates])
        return self.from_mean(server_round, global_weights, mean)

    def kept_devices(self) -> tuple[int, ...] | None:
        """The devices whose models the last :meth:`aggregate` used (Krum, Bulyan select); None: all of them."""
        return None

    def from_mean(self, server_round: int, global_weights: Weights, mean: Weights) -> Weights:
        """New global weights from the sample-weighted mean of the devices' models (linear strategies)."""
        raise NotImplementedError(f"{self.name} needs the individual updates, not just their mean")

    @classmethod
    def _hyperparameter_fields(cls):
        return [f for f in fields(cls) if f.init]  # type: ignore[arg-type]

    @classmethod
    def parameters(cls) -> dict[str, float]:
        """Hyper-parameter names and their defaults."""
        return {f.name: f.default for f in cls._hyperparameter_fields()}

    @classmethod
    def parameter_help(cls) -> dict[str, str]:
        """Hyper-parameter names and a line describing each, with its allowed range."""
        return {
            f.name: f"{f.metadata.get('help', f.name)} ({f.metadata.get('bounds', Bounds()).describe()})"
            for f in cls._hyperparameter_fields()
        }

    @classmethod
    def parameter_problems(cls, values: Mapping[str, object]) -> list[str]:
        """Why ``values`` (a subset of the hyper-parameters) cannot be used, one message each; [] if fine."""
        found = []
        declared = {f.name: f for f in cls._hyperparameter_fields()}
        unknown = sorted(set(values) - set(declared))
        if unknown:
            known = ", ".join(declared) or "none"
            found.append(f"{cls.name} has no parameter {', '.join(unknown)}; its parameters: {known}")
        for name, value in values.items():
            if name not in declared:
                continue
            bounds: Bounds = declared[name].metadata.get("bounds", Bounds())
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
                found.append(f"{cls.name}: {name} must be a finite number, got {value!r}")
            elif not bounds.contains(float(value)):
                found.append(f"{cls.name}: {name} must be {bounds.describe()}, got {value!r}")
            elif declared[name].metadata.get("integer") and float(value) != int(value):
                found.append(f"{cls.name}: {name} must be a whole number, got {value!r}")
        return found


__all__ = [
    "AggregationSkipped",
    "Bounds",
    "FRACTION",
    "LocalOptions",
    "NON_NEGATIVE",
    "POSITIVE",
    "Strategy",
    "hyperparameter",
    "state",
]
