"""Experiment files: a run's configuration as TOML (``--config run.toml``), and back (``runs --show``).

Every :class:`~engine.config.FederationConfig` field is a TOML key of the same
name (``model = "mlp"``, ``num_devices = 4``, ``faults = { 3 = "scale" }``).
TOML has no null: an optional field that is unset is left out, and
``rounds = 0`` means "until stopped", as on the command line.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

from engine.config import ConfigError, FederationConfig

FIELDS = {f.name: f for f in fields(FederationConfig)}
INT_KEYED = ("faults", "slowdowns")  # tables keyed by device id


def read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML document at ``path``; ``ConfigError`` with the file name when it is missing or malformed."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"config file {path} does not exist"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError([f"config file {path} is not valid TOML: {error}"]) from None


def _type_problem(name: str, value: Any) -> str | None:
    """Why ``value`` has the wrong type for field ``name`` (None: it has the right one)."""
    declared = str(FIELDS[name].type)
    if declared.startswith("dict"):
        ok, wanted = isinstance(value, dict), "a table such as { 3 = \"scale\" }"
    elif declared.startswith("bool"):
        ok, wanted = isinstance(value, bool), "true or false"
    elif declared.startswith("int"):
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif declared.startswith("float"):
        ok, wanted = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        ok, wanted = isinstance(value, str), "a string"
    return None if ok else f"{name} must be {wanted}, got {value!r}"


def config_values(document: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """``FederationConfig`` keyword arguments from a parsed TOML table; ``ConfigError`` naming every problem."""
    unknown = sorted(set(document) - set(FIELDS))
    problems = [f"{source}: unknown setting(s) {', '.join(unknown)}; settings are the FederationConfig fields: "
                f"{', '.join(FIELDS)}"] if unknown else []
    values: dict[str, Any] = {}
    for name, value in document.items():
        if name not in FIELDS:
            continue
        problem = _type_problem(name, value)
        if problem:
            problems.append(f"{source}: {problem}")
            continue
        if name in INT_KEYED:
            try:
                value = {int(device): v for device, v in value.items()}
            except ValueError:
                problems.append(f"{source}: {name} must be keyed by device number, got {sorted(value)}")
                continue
        if name == "rounds" and value == 0:
            value = None  # until stopped
        if name == "strategy_params":
            value = {key: float(v) if isinstance(v, (int, float)) else v for key, v in value.items()}
        values[name] = value
    if problems:
        raise ConfigError(problems)
    return values


def load_config(path: str | Path) -> FederationConfig:
    """The configuration a TOML file describes (fields it leaves out keep their defaults), unvalidated."""
    return FederationConfig(**config_values(read_toml(path), str(path)))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are valid TOML
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_key(key: Any) -> str:
    text = str(key)
    return text if text.replace("_", "").replace("-", "").isalnum() and text.isascii() else json.dumps(text)


def config_to_toml(config: FederationConfig, header: str = "") -> str:
    """Every field of ``config`` as TOML that :func:`load_config` reads back to an equal configuration."""
    lines = [f"# {line}" for line in header.splitlines()]
    for name in FIELDS:
        value = getattr(config, name)
        if name == "rounds" and value is None:
            lines.append("rounds = 0  # until stopped")
        elif value is None:
            lines.append(f"# {name} is not set")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
