"""Test helpers for the Flower side: an in-process Grid skeleton and copies of the app with test components."""

from __future__ import annotations

import shutil
from pathlib import Path

from flwr.app import Message
from flwr.serverapp import Grid

APP_PACKAGES = ("data", "devices", "engine", "flower_app")


class StubGrid(Grid):
    """A Grid whose subclasses answer ``send_and_receive`` in this process (no SuperLink, no run)."""

    def set_run(self, run) -> None: ...

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError


def app_copy(root: Path, folder: Path, replacements: dict[str, str]) -> Path:
    """A copy of the app in ``folder`` whose pyproject.toml has each ``replacements`` key replaced by its value."""
    for package in APP_PACKAGES:
        shutil.copytree(root / package, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    text = (root / "pyproject.toml").read_text()
    for old, new in replacements.items():
        assert old in text, f"pyproject.toml has no {old!r}"
        text = text.replace(old, new)
    (folder / "pyproject.toml").write_text(text)
    return folder
