"""Declare a setting once: its help, bounds, choices, group and labels live on the dataclass field.

``FederationConfig`` (and anything else configurable) declares each field with
:func:`setting`; the CLI options, the dashboard's setup widgets, the
environment defaults and Flower's run-config keys are generated from that
metadata, so they cannot drift apart. Strategy hyper-parameters use the same
:class:`Bounds`.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, dataclass, fields
from numbers import Real
from typing import Any, Callable


@dataclass(frozen=True)
class Bounds:
    """The allowed range of a number; ``None`` means unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return False
        if self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive)):
            return False
        return True

    def describe(self) -> str:
        """Plain words: ``> 0``, ``>= 0`` or ``in [0, 1)``."""
        if self.low is not None and self.high is not None:
            left, right = "[" if self.low_inclusive else "(", "]" if self.high_inclusive else ")"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>=' if self.low_inclusive else '>'} {self.low:g}"
        if self.high is not None:
            return f"{'<=' if self.high_inclusive else '<'} {self.high:g}"
        return "any finite number"


POSITIVE = Bounds(low=0.0, low_inclusive=False)
NON_NEGATIVE = Bounds(low=0.0)
FRACTION = Bounds(low=0.0, high=1.0)  # [0, 1)
AT_LEAST_ONE = Bounds(low=1.0)
SEED = Bounds(low=0.0, high=2.0**32 - 1, high_inclusive=True)  # what NumPy and Keras accept


@dataclass(frozen=True)
class Setting:
    """What a configuration field means, for people and for the generated interfaces.

    ``group`` orders the field into a section (CLI argument group, dashboard
    expander); ``label`` is the dashboard's wording, ``help`` the one-line
    explanation shared by ``--help`` and the dashboard's tooltip; ``flag``
    overrides the CLI option name (default ``--field-name``); ``choices`` is a
    tuple of allowed values, or a function returning them (registries that grow
    at run time); ``bounds`` the numeric range (checked after ``None``, which an
    optional field allows).
    """

    help: str
    group: str
    label: str = ""
    bounds: Bounds | None = None
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None
    flag: str | None = None

    def allowed_choices(self) -> tuple[Any, ...] | None:
        return self.choices() if callable(self.choices) else self.choices


def setting(
    default: Any = MISSING,
    *,
    help: str,
    group: str,
    label: str = "",
    bounds: Bounds | None = None,
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None,
    flag: str | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
) -> Any:
    """A dataclass field carrying its :class:`Setting` metadata."""
    from dataclasses import field

    meta = {"setting": Setting(help=help, group=group, label=label, bounds=bounds, choices=choices, flag=flag)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def declared_settings(cls: type) -> list[tuple[Field, Setting]]:
    """The fields of dataclass ``cls`` declared with :func:`setting`, in declaration order."""
    return [(f, f.metadata["setting"]) for f in fields(cls) if "setting" in f.metadata]


def value_problem(name: str, value: Any, spec: Setting) -> str | None:
    """Why ``value`` is not allowed for the setting ``name`` (None: it is)."""
    label = spec.label or name.replace("_", " ")
    if value is None:
        return None
    choices = spec.allowed_choices()
    if choices is not None and not isinstance(value, (dict, list, tuple)) and value not in choices:
        return f"{label} must be one of {', '.join(map(str, choices))}, got {value!r}"
    if spec.bounds is not None and not isinstance(value, (dict, list, tuple, str)):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
            return f"{label} must be a finite number, got {value!r}"
        if not spec.bounds.contains(float(value)):
            return f"{label} must be {spec.bounds.describe()}, got {value!r}"
    return None
