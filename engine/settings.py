"""Declare a setting once: its help, bounds, choices, group and labels live on the dataclass field.

``FederationConfig`` (and anything else configurable) declares each field with
:func:`setting`; the CLI options, the dashboard's setup widgets, the
environment defaults and Flower's run-config keys are generated from that
metadata, so they cannot drift apart. Strategy hyper-parameters use the same
:class:`Bounds`.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, Field, dataclass, fields
from numbers import Integral, Real
from types import UnionType
from typing import Any, Callable, Union, get_args, get_origin, get_type_hints


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
            return f"in {left}{_number_text(self.low)}, {_number_text(self.high)}{right}"
        if self.low is not None:
            return f"{'>=' if self.low_inclusive else '>'} {_number_text(self.low)}"
        if self.high is not None:
            return f"{'<=' if self.high_inclusive else '<'} {_number_text(self.high)}"
        return "any finite number"


def _number_text(number: float) -> str:
    """``4294967295`` rather than ``4.29497e+09``; ``0.5`` as is."""
    return str(int(number)) if float(number).is_integer() and abs(number) < 1e16 else f"{number:g}"


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
    optional field allows); ``metavar`` names the parts of a mapping's
    ``KEY=VALUE`` items (e.g. ``DEVICE=FAULT``).
    """

    help: str
    group: str
    label: str = ""
    bounds: Bounds | None = None
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None
    flag: str | None = None
    metavar: str | None = None

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
    metavar: str | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
) -> Any:
    """A dataclass field carrying its :class:`Setting` metadata."""
    from dataclasses import field

    meta = {"setting": Setting(help=help, group=group, label=label, bounds=bounds, choices=choices, flag=flag,
                               metavar=metavar)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def declared_settings(cls: type) -> list[tuple[Field, Setting]]:
    """The fields of dataclass ``cls`` declared with :func:`setting`, in declaration order."""
    return [(f, f.metadata["setting"]) for f in fields(cls) if "setting" in f.metadata]


AUDIENCES = ("cli", "dashboard")


def flag_name(name: str, spec: Setting) -> str:
    """The CLI option of field ``name``: its declared flag, else ``--field-name``."""
    return spec.flag or "--" + name.replace("_", "-")


def option_name(cls: type, name: str, audience: str = "cli") -> str:
    """How a user names setting ``name`` of ``cls`` in a message: the CLI's flag, or the dashboard's quoted label."""
    spec = next(s for f, s in declared_settings(cls) if f.name == name)
    return flag_name(name, spec) if audience == "cli" else f'"{short_label(name, spec)}"'


def use_value(cls: type, name: str, value: Any, audience: str = "cli") -> str:
    """An instruction to set ``name`` to ``value``: ``use --devices 3`` or ``set "Number of devices" to 3``."""
    option = option_name(cls, name, audience)
    return f"use {option} {value}" if audience == "cli" else f"set {option} to {value}"


def reword(cls: type, message: str, audience: str) -> str:
    """``message`` (worded for the CLI) in ``audience``'s words: each ``--flag [METAVAR]`` of ``cls``'s settings
    becomes the dashboard's quoted label (``needs --target COLUMN`` -> ``needs "Target column"``)."""
    if audience == "cli":
        return message
    labels = {flag_name(f.name, spec): f'"{short_label(f.name, spec)}"' for f, spec in declared_settings(cls)}

    def label(match: re.Match) -> str:
        return labels.get(match.group(1), match.group(0))

    return re.sub(r"(--[a-z][a-z0-9-]*)(?: [A-Z][A-Z_]+\b)?", label, message)


def short_label(name: str, spec: Setting) -> str:
    """The label without its parenthesised hint: ``Dirichlet alpha``, not ``Dirichlet alpha (smaller = ...)``."""
    return (spec.label or name.replace("_", " ")).split(" (")[0]


def value_problem(name: str, value: Any, spec: Setting) -> str | None:
    """Why ``value`` is not allowed for the setting ``name`` (None: it is)."""
    label = short_label(name, spec)
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


# -- what type a setting has, and its text form (CLI, environment, Flower run config) ------------
NONE_WORDS = ("", "none", "0", "inf", "unlimited", "all")  # an optional count: "no limit"
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Kind:
    """A setting's value type: ``base`` is bool, int, float, str, dict (``key`` and ``value`` types) or a
    tuple / list (``value``: the items' type).

    ``optional`` fields allow ``None``. For an optional number whose bounds
    exclude 0, the text ``0`` (and ``none``, ``inf``, ``unlimited``, ``all``,
    or nothing) means ``None``: "no limit" / "not set", as the dashboard's
    "0 = all" widgets and Flower's run config (which has no null) write it.
    """

    base: type
    optional: bool = False
    key: type | None = None
    value: type | None = None
    bounds: Bounds | None = None
    metavar: str = "KEY=VALUE"  # a mapping's items, e.g. DEVICE=FAULT

    @property
    def collection(self) -> bool:
        """A mapping or a sequence: written ``k=v,k=v`` / ``a,b,c``, not a single value."""
        return self.base in (dict, tuple, list)

    @property
    def zero_is_none(self) -> bool:
        return self.optional and self.base in (int, float) and self.bounds is not None \
            and not self.bounds.contains(0.0)

    def parse(self, text: str) -> Any:
        """``text`` as a value of this kind; ``ValueError`` with a one-line reason when it is not one."""
        text = str(text).strip()
        if self.base is dict:
            return dict(self._pair(item) for item in text.replace(",", " ").split())
        if self.base in (tuple, list):
            return self.base(_scalar(self.value or str, item) for item in text.replace(",", " ").split())
        if self.optional and (text.lower() in ("", "none") or (self.zero_is_none and text.lower() in NONE_WORDS)):
            return None
        return _scalar(self.base, text)

    def _pair(self, item: str) -> tuple[Any, Any]:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key.strip() or not value.strip():
                raise ValueError
            return _scalar(self.key or str, key.strip()), _scalar(self.value or str, value.strip())
        except ValueError:
            raise ValueError(f"expected {self.metavar} ({_type_word(self.key)}={_type_word(self.value)}), "
                             f"got {item!r}") from None

    def plain(self, value: Any) -> bool | int | float | str:
        """``value`` as a TOML scalar (Flower's run config): ``None`` -> 0 / "", a mapping -> ``"k=v,k=v"``."""
        if self.base is dict:
            return ",".join(f"{key}={_scalar_text(item)}" for key, item in sorted(value.items()))
        if self.base in (tuple, list):
            return ",".join(_scalar_text(item) for item in value)
        if value is None:
            return {int: 0, float: 0.0}.get(self.base, "")
        return self.base(value)

    def from_plain(self, value: Any) -> Any:
        """The inverse of :meth:`plain`; also accepts text (``flwr run --run-config`` values)."""
        if isinstance(value, str) or self.collection:
            return self.parse(str(value))
        if self.zero_is_none and value == 0:
            return None
        if self.base is bool and not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        if self.base is int and (isinstance(value, bool) or not float(value).is_integer()):
            raise ValueError(f"expected a whole number, got {value!r}")
        return self.base(value)


def _type_word(kind: type | None) -> str:
    return {int: "INTEGER", float: "NUMBER"}.get(kind, "TEXT")


def _scalar(base: type, text: str) -> Any:
    if base is bool:
        if text.lower() in TRUE_WORDS + FALSE_WORDS:
            return text.lower() in TRUE_WORDS
        raise ValueError(f"expected true or false, got {text!r}")
    if base is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected a whole number, got {text!r}") from None
    if base is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    return text


def _scalar_text(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def kinds(cls: type) -> dict[str, Kind]:
    """The :class:`Kind` of every declared field of ``cls``, read from its annotations."""
    hints = get_type_hints(cls)
    found = {}
    for f, spec in declared_settings(cls):
        hint, optional = hints[f.name], False
        args = get_args(hint)
        if isinstance(hint, UnionType) or get_origin(hint) is Union:
            optional = type(None) in args
            hint = next(a for a in args if a is not type(None))
            args = get_args(hint)
        base = get_origin(hint) or hint
        if base not in (bool, int, float, str, dict, tuple, list):
            raise TypeError(f"setting {f.name} has type {hint!r}; declared settings are bool, int, float, str, "
                            "dict, tuple or list (optional allowed)")
        key, value = args if base is dict else (None, args[0] if args else None) if base in (tuple, list) \
            else (None, None)
        found[f.name] = Kind(base, optional, key, value, spec.bounds, spec.metavar or "KEY=VALUE")
    return found


def type_problem(name: str, value: Any, kind: Kind, spec: Setting) -> str | None:
    """Why ``value`` does not have the setting's type (None: it does); a float is no whole number, NaN no number."""
    label = short_label(name, spec)
    if value is None:
        return None if kind.optional else f"{label} must be set"
    if kind.base is dict:
        return None if isinstance(value, dict) else f"{label} must be a mapping, got {value!r}"
    if kind.base in (tuple, list):
        return None if isinstance(value, (tuple, list)) else f"{label} must be a list, got {value!r}"
    if kind.base is bool:
        return None if isinstance(value, bool) else f"{label} must be true or false, got {value!r}"
    if kind.base in (int, float):
        whole = kind.base is int
        if isinstance(value, bool) or not isinstance(value, Integral if whole else Real):
            return f"{label} must be a {'whole ' if whole else ''}number, got {value!r}"
        if not math.isfinite(value):
            return f"{label} must be a finite number, got {value!r}"
        return None
    return None if isinstance(value, str) else f"{label} must be text, got {value!r}"


def parse_setting(cls: type, name: str, text: str) -> Any:
    """The text form of setting ``name`` of ``cls`` as a checked value; ``ValueError`` says why it is not one.

    One code path for every text source: CLI options, environment variables, run-config strings.
    """
    kind, spec = kinds(cls)[name], dict((f.name, s) for f, s in declared_settings(cls))[name]
    value = kind.parse(text)
    problem = type_problem(name, value, kind, spec) or value_problem(name, value, spec)
    if problem:
        raise ValueError(problem)
    return value


def field_problems(instance: Any) -> dict[str, str]:
    """Each declared field of dataclass ``instance`` that breaks its type, bounds or choices, with the reason."""
    found = {}
    cls_kinds = kinds(type(instance))
    for f, spec in declared_settings(type(instance)):
        value = getattr(instance, f.name)
        problem = type_problem(f.name, value, cls_kinds[f.name], spec) or value_problem(f.name, value, spec)
        if problem:
            found[f.name] = problem
    return found
