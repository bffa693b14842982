"""Devices that run elsewhere (Flower SuperNodes): the transport's extra duties and how their state is shown."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Protocol

from devices.messages import Weights
from engine.results import DeviceState, DeviceStatus
from engine.transport import Transport


class RemoteTransport(Transport, Protocol):
    """A transport to devices that run elsewhere (e.g. ``flower_app.serverapp_link.LinkTransport``)."""

    training_note: str

    def node_view(self, device_id: int):
        """The device's node (``node_id``, ``declared_samples``, ``last_seen`` monotonic seconds), or None."""

    def close(self, status: str, details: str) -> None:
        """Release the link; ``status``: completed, stopped or failed."""

    def device_states(self) -> dict[int, dict[str, Weights]]:
        """What each device must remember between rounds, as the server knows it (for the run store)."""

    def restore_device_states(self, states: dict[int, dict[str, Weights]]) -> None:
        """A resumed run's stored device states: sent to each device that no longer holds its own."""


def remote_device_state(state: DeviceState, node, now: float | None = None) -> DeviceState:
    """``state`` of a device that runs elsewhere: its node, declared data and last contact, or not connected."""
    if node is None:
        status = state.status if state.status in (DeviceStatus.INACTIVE, DeviceStatus.TRAINING) \
            else DeviceStatus.OFFLINE
        return replace(state, status=status, detail=state.detail or "no node connected for this device yet")
    seen = max(0.0, (time.monotonic() if now is None else now) - node.last_seen)
    samples = state.samples if node.declared_samples is None else node.declared_samples
    detail = f"node {node.node_id}, seen {seen:.0f} s ago" + (f"; {state.detail}" if state.detail else "")
    return replace(state, samples=samples, detail=detail)
