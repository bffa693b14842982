"""How a round's instructions reach the devices and their replies come back: the transport.

The round protocol (``engine.rounds.RoundRunner``: select, instruct, collect,
validate, aggregate, evaluate) is the same whatever carries the messages. A
transport only delivers: it sends each selected device its
``TrainInstructions`` and hands every reply to the loop, as it arrives, as an
``EncodedUpdate`` (what the device sent), an ``Exception`` (the device failed)
or a ``DeviceProblem`` (the transport could not make sense of the reply). The
loop validates every update before it uses it (``engine.transport_checks``).

- :class:`InProcessTransport`: simulated devices on this machine's worker pool
  (stacked cohorts or one device at a time).
- ``flower_app.transport.GridTransport``: Flower messages through a ServerApp's
  ``Grid`` to SuperNodes; under secure aggregation it runs Flower's SecAgg+
  and hands the loop only the sum (:class:`SecureSum`).
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from devices.codec import encode_delta
from devices.cohort import Outcome, plan_cohorts
from devices.device import Device
from devices.messages import TrainInstructions, Weights
from devices.pool import WorkerPool
from devices.trainer import TrainingStopped
from engine.results import DeviceProblem

Reply = Outcome | DeviceProblem
Receive = Callable[[int, Reply], None]
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class SecureSum:
    """A secure-aggregation round the transport ran itself (Flower's SecAgg+): only the sum is known.

    ``mean_delta`` is the plan-weighted mean of the deltas of ``devices`` (None: the protocol halted, with
    ``reason``); no device's own update ever reached the server.
    """

    mean_delta: Weights | None
    devices: tuple[int, ...]
    reason: str = ""


class Transport(Protocol):
    """What the round loop needs from whatever carries its messages."""

    def declared_samples(self, device_id: int) -> int | None:
        """How many training samples the device says it holds (None: unknown); bounds its ``num_samples``."""

    def reachable(self, device_ids: Sequence[int]) -> list[int]:
        """The devices among ``device_ids`` that can be asked to train now (e.g. whose node is connected)."""

    def slowdown(self, device_id: int) -> float:
        """The device's simulated slowdown (1.0: none), for round deadlines."""

    def collect(
        self, instructions: dict[int, TrainInstructions], checkpoint: Callable[[int], None], receive: Receive
    ) -> int:
        """Deliver ``instructions`` (device id -> its instructions), call ``receive`` once per device with
        its reply, as replies arrive; return the bytes sent down. ``checkpoint`` raises to stop the round."""

    def secure_sum(self) -> SecureSum | None:
        """The last ``collect``'s sum when the transport ran secure aggregation itself; None when the devices
        masked their updates (``TrainInstructions.secure``) and the round loop unmasks their sum."""


def task_outcomes(future: Future, count: int) -> list[Outcome]:
    """What a finished training task yields for each of its ``count`` devices; a stop is re-raised."""
    error = future.exception()
    if isinstance(error, TrainingStopped):
        raise error
    if error is not None:
        return [error] * count
    result = future.result()
    return result if isinstance(result, list) else [result]


class InProcessTransport:
    """Simulated devices trained by this process's worker pool."""

    def __init__(
        self, devices: Sequence[Device], pool: WorkerPool, stack_width: int, on_progress: ProgressCallback
    ):
        self.devices = devices
        self.pool = pool
        self.stack_width = stack_width
        self.on_progress = on_progress

    def declared_samples(self, device_id: int) -> int | None:
        return self.devices[device_id].data.num_train

    def slowdown(self, device_id: int) -> float:
        return self.devices[device_id].slowdown

    def reachable(self, device_ids: Sequence[int]) -> list[int]:
        """Simulated devices are always there (their simulated dropouts are the round's business)."""
        return list(device_ids)

    def secure_sum(self) -> SecureSum | None:
        return None  # simulated devices mask their updates; the round loop unmasks the sum

    def collect(
        self, instructions: dict[int, TrainInstructions], checkpoint: Callable[[int], None], receive: Receive
    ) -> int:
        checkpoints = {d: self._device_checkpoint(d, checkpoint) for d in instructions}
        futures: dict[Future, list[int]] = {}
        for group in self.training_groups(instructions):
            if self.pool.stacks:
                future = self.pool.submit_cohort(
                    [self.devices[d] for d in group], [instructions[d] for d in group], [checkpoints[d] for d in group]
                )
            else:
                (device_id,) = group
                future = self.pool.submit(self.devices[device_id], instructions[device_id], checkpoints[device_id])
            futures[future] = group
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    for device_id, outcome in zip(futures[future], task_outcomes(future, len(futures[future]))):
                        receive(device_id, outcome)
        except TrainingStopped:
            for future in pending:
                future.cancel()
            wait(pending)
            raise
        if not instructions:
            return 0
        first = next(iter(instructions.values()))
        return len(encode_delta(first.weights, "none")[0]) * len(instructions)

    def training_groups(self, instructions: dict[int, TrainInstructions]) -> list[list[int]]:
        """Devices trained together: stacks of similar length, or one device at a time."""
        if not self.pool.stacks:
            return [[d] for d in instructions]
        steps = {d: self.devices[d].local_steps(instr) for d, instr in instructions.items()}
        samples = {d: self.devices[d].data.num_train for d in instructions}
        return plan_cohorts(steps, self.stack_width, self.pool.workers, samples)

    def _device_checkpoint(self, device_id: int, checkpoint: Callable[[int], None]) -> Callable[[int], None]:
        def device_checkpoint(steps: int) -> None:
            checkpoint(steps)
            self.on_progress(device_id, steps)

        return device_checkpoint
