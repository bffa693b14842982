"""Worker threads that train devices, one at a time or as stacks, each thread reusing its own models."""

from __future__ import annotations

import queue
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

from devices.cohort import Outcome, train_cohort
from devices.device import Device
from devices.messages import EncodedUpdate, TrainInstructions
from devices.stacked import StackedReplica
from devices.trainer import Checkpoint, ModelReplica

MakeStack = Callable[[int], StackedReplica]

CACHED_STACK_WIDTHS = 4  # stack replicas kept per worker; a round usually needs one or two widths


class Worker:
    """One worker thread's models: a replica for single devices and stacked replicas by width.

    Each is built the first time it is needed and then reused, so no model is
    built or traced per device or per round.
    """

    def __init__(self, make_replica: Callable[[], ModelReplica], make_stack: MakeStack | None):
        self._make_replica = make_replica
        self._make_stack = make_stack
        self._replica: ModelReplica | None = None
        self._stacks: OrderedDict[int, StackedReplica] = OrderedDict()

    @property
    def replica(self) -> ModelReplica:
        if self._replica is None:
            self._replica = self._make_replica()
        return self._replica

    def stack(self, width: int) -> StackedReplica:
        if self._make_stack is None:
            raise RuntimeError("this pool trains devices one by one")
        if width not in self._stacks:
            if len(self._stacks) >= CACHED_STACK_WIDTHS:
                self._stacks.popitem(last=False)
            self._stacks[width] = self._make_stack(width)
        self._stacks.move_to_end(width)
        return self._stacks[width]


class WorkerPool:
    """Runs device training on ``workers`` threads, each holding one :class:`Worker`'s models.

    With ``make_stack`` the pool can also train a cohort of devices as one
    stacked computation (:meth:`submit_cohort`).
    """

    def __init__(self, make_replica: Callable[[], ModelReplica], workers: int = 1, make_stack: MakeStack | None = None):
        self._workers: queue.SimpleQueue[Worker] = queue.SimpleQueue()
        for _ in range(workers):
            self._workers.put(Worker(make_replica, make_stack))
        self.workers = workers
        self.stacks = make_stack is not None
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="device-worker")

    def _run(self, task: Callable[[Worker], object]) -> Future:
        def run():
            worker = self._workers.get()
            try:
                return task(worker)
            finally:
                self._workers.put(worker)

        return self._executor.submit(run)

    def submit(self, device: Device, instructions: TrainInstructions, checkpoint: Checkpoint) -> Future[EncodedUpdate]:
        return self._run(lambda worker: device.respond(instructions, worker.replica, checkpoint))

    def submit_cohort(
        self, devices: Sequence[Device], instructions: Sequence[TrainInstructions], checkpoints: Sequence[Checkpoint]
    ) -> Future[list[Outcome]]:
        """Train ``devices`` together; the future holds each device's update or failure, in order."""
        return self._run(lambda worker: train_cohort(devices, instructions, worker.stack(len(devices)), checkpoints))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
