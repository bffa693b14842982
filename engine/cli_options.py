"""Command-line options generated from declared settings, and the one-line error style of the CLI.

Every field of a dataclass declared with :func:`engine.settings.setting`
becomes one option of ``python -m engine run``: in the argument group named by
its ``group``, called ``flag`` or ``--field-name``, typed from its annotation
(a mapping takes repeatable ``KEY=VALUE`` items), with its choices, bounds and
help. A new field needs no CLI code.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import MISSING, Field
from typing import Any, Callable, NoReturn

from engine.settings import Kind, Setting, declared_settings, flag_name, kinds, parse_setting

GROUP_TITLES = {
    "devices": "devices and how the data is split",
    "round": "each round",
    "speed": "speed",
    "behaviour": "unreliable and malicious devices",
    "privacy": "privacy and compression",
}


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``error: REASON (see PROG --help)``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {fold_whitespace(message)} (see {self.prog} --help)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only when there is a default worth showing and the help does not name one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default in ([], {}, "", argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def flag_of(f: Field, spec: Setting) -> str:
    return flag_name(f.name, spec)


def default_of(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _typed(cls: type, name: str, kind: Kind) -> Callable[[str], Any]:
    """The argparse ``type`` of a setting: :func:`engine.settings.parse_setting`, its reason as argparse's."""

    def parse(text: str) -> Any:
        try:
            return parse_setting(cls, name, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = kind.base.__name__
    return parse


def add_setting_options(parser: argparse.ArgumentParser, cls: type,
                        help_overrides: dict[str, str] | None = None, groups: dict[str, Any] | None = None) -> None:
    """One option per declared field of ``cls``, grouped by ``Setting.group`` in declaration order.

    ``groups`` (group name -> argument group) is filled and reused: pass the same dict for several classes
    whose settings share a group."""
    groups = {} if groups is None else groups
    cls_kinds = kinds(cls)
    for f, spec in declared_settings(cls):
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(GROUP_TITLES.get(spec.group, spec.group))
        kind, default = cls_kinds[f.name], default_of(f)
        help_text = (help_overrides or {}).get(f.name, spec.help)
        options: dict[str, Any] = {"dest": f.name, "help": help_text}
        if kind.base is bool and not kind.optional:
            options["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
            options["default"] = default
        elif kind.base is dict:
            options.update(action="append", type=_typed(cls, f.name, kind), default=None,
                           metavar=kind.metavar, help=help_text + "; repeatable")
        else:
            metavar = flag_of(f, spec).lstrip("-").upper().replace("-", "_")
            options.update(type=_typed(cls, f.name, kind), default=default,
                           metavar=f"{metavar},..." if kind.collection else metavar)
            if spec.allowed_choices():
                del options["metavar"]
                options["choices"] = spec.allowed_choices()
        groups[spec.group].add_argument(flag_of(f, spec), **options)


def setting_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The declared fields' values in ``args`` (parsed by :func:`add_setting_options`), ready for ``cls(**...)``."""
    values, cls_kinds = {}, kinds(cls)
    for f, _ in declared_settings(cls):
        value = getattr(args, f.name)
        if cls_kinds[f.name].base is dict:  # repeated KEY=VALUE items, later ones win
            value = {key: item for part in value for key, item in part.items()} if value else default_of(f)
        values[f.name] = value
    return values


def fold_whitespace(message: str) -> str:
    """``message`` with its whitespace (newlines included) folded into single spaces."""
    return re.sub(r"\s+", " ", str(message)).strip()
