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


class ClientAppGrid(StubGrid):
    """Nodes that run the real ClientApp (``flower_app.client_app.app``: its mods and handlers) in this process.

    Each node has its own ``Context``, whose ``state`` is kept between messages as a SuperNode keeps it; each
    message reaches its node as a copy (as through a SuperLink), and a ClientApp that raises sends an error
    reply. ``sent`` keeps every (node id, reply) for tests that look at what left the nodes.
    """

    def __init__(self, node_configs: dict[int, dict], run_config: dict):
        from flwr.app import Context, RecordDict

        self.contexts = {node: Context(run_id=1, node_id=node, node_config=dict(config), state=RecordDict(),
                                       run_config=dict(run_config)) for node, config in node_configs.items()}
        self._replies: dict[str, Message] = {}
        self.sent: list[tuple[int, Message]] = []

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        from flwr.app import Error
        from flwr.common.serde import message_from_proto, message_to_proto

        from flower_app.client_app import app

        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id  # what the SuperLink does
            delivered = message_from_proto(message_to_proto(message))  # a copy, as over the wire
            node = delivered.metadata.dst_node_id
            try:
                reply = app(delivered, self.contexts[node])
            except Exception as error:  # what a SuperNode sends back when its ClientApp raises
                reply = Message(Error(code=1, reason=f"{type(error).__name__}: {error}"), reply_to=delivered)
            self.sent.append((node, reply))
            self._replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))
