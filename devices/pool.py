"""Worker threads that train devices, each thread reusing one model replica."""

from __future__ import annotations

import queue
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from devices.device import Device
from devices.messages import EncodedUpdate, TrainInstructions
from devices.trainer import Checkpoint, ModelReplica


class WorkerPool:
    """Runs ``Device.respond`` calls concurrently on ``workers`` threads.

    Replicas are built once, up front, and handed to whichever task runs next,
    so no model is built or traced per device or per round.
    """

    def __init__(self, make_replica: Callable[[], ModelReplica], workers: int = 1):
        self._replicas: queue.SimpleQueue[ModelReplica] = queue.SimpleQueue()
        for _ in range(workers):
            self._replicas.put(make_replica())
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="device-worker")

    def submit(self, device: Device, instructions: TrainInstructions, checkpoint: Checkpoint) -> Future[EncodedUpdate]:
        def run() -> EncodedUpdate:
            replica = self._replicas.get()
            try:
                return device.respond(instructions, replica, checkpoint)
            finally:
                self._replicas.put(replica)

        return self._executor.submit(run)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
