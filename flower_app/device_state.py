"""The server's copy of what each Flower device must remember between rounds: SCAFFOLD's control variate c_i.

A device's c_i is device state: it lives on its SuperNode (``context.state``,
``flower_app.node.LocalNode.respond_with_state``) and never has to leave it.
But a Flower run's ``context.state`` lasts one Flower run, and resuming a
stored run submits a new one, whose nodes start empty. So the server keeps a
copy, built only from what it is sent anyway: c_i starts at zero and changes
by the ``control_delta`` the device sends with every update, so the running
sum of those is c_i (to float32 rounding, :func:`devices.scaffold.mirrored_control`).
The copy goes to the run store like a simulated device's state, and a resumed
run sends each device its stored c_i once, in the first round that reaches it
(``ControlVariate.device_weights``); a node that still holds its own keeps it.

What the copy cannot know: a reply the server never received (the node left
mid-round, or replied after ``round-timeout``) changed the device's c_i but not
the copy. That only matters if the run is resumed after it: the device then
continues from the copy.
"""

from __future__ import annotations

from dataclasses import replace

from devices.messages import EncodedUpdate, TrainInstructions, Weights
from devices.scaffold import mirrored_control
from engine.transport_checks import control_delta_problem


class ControlMirror:
    """Partition id -> the server's copy of that device's c_i, and which node is known to hold the same."""

    def __init__(self) -> None:
        self._controls: dict[int, Weights] = {}
        self._in_step: dict[int, int | None] = {}  # partition id -> the node whose own c_i the copy follows

    def outgoing(self, partition: int, instruction: TrainInstructions, node: int | None) -> TrainInstructions:
        """``instruction`` for ``node``, carrying the stored c_i when that node may not hold it (a resumed run)."""
        kept = self._controls.get(partition)
        if instruction.control is None or kept is None or (partition in self._in_step
                                                           and self._in_step[partition] == node):
            return instruction
        return replace(instruction, control=replace(instruction.control, device_weights=kept))

    def received(self, partition: int, reply, instruction: TrainInstructions, node: int | None) -> None:
        """Follow the change a reply to ``instruction`` reports (ignored unless it is a usable SCAFFOLD update)."""
        if not isinstance(reply, EncodedUpdate) or instruction.control is None or reply.control_delta is None:
            return
        if control_delta_problem(reply.control_delta, instruction.weights) is not None:
            return  # the round rejects it too; what the device did with its own copy is its business
        self._controls[partition] = mirrored_control(self._controls.get(partition), reply.control_delta)
        self._in_step[partition] = node

    def states(self) -> dict[int, dict[str, Weights]]:
        """Each device's c_i as the server knows it, in the run store's device-state form."""
        return {partition: {"control": control} for partition, control in self._controls.items()}

    def restore(self, states: dict[int, dict[str, Weights]]) -> None:
        """A resumed run's stored states: every device is sent its own c_i the next time it is asked to train."""
        self._controls = {partition: state["control"] for partition, state in states.items() if "control" in state}
        self._in_step = {}
