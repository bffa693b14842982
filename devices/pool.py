"""Worker threads that train devices, one at a time or as stacks, reusing models built once.

Building a model and tracing its ``tf.function``s costs seconds; a round of
local training on a small device costs milliseconds. So each worker thread
owns one replica for single devices, stacked replicas (one per stack width)
live in a cache shared by all workers (a worker takes an idle one of the
width it needs and builds one only when none is idle; stacks share their traced
functions, ``devices.stacked_program``, so only the first stack of a model in a
process traces, per width for a convolutional model, and the others only
set up their state), and :meth:`WorkerPool.warm_up`
builds and traces the models a round will need ahead of it, off the round's
critical path: one trace at a time, each stack handed to the round as soon as
its own trace is done.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter, OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, Sequence

import numpy as np

from devices.cohort import Outcome, stacks_in_use, train_cohort
from devices.device import Device
from devices.messages import EncodedUpdate, TrainInstructions
from devices.stacked import StackedReplica
from devices.trainer import Checkpoint, ModelReplica, SampleSpec

MakeStack = Callable[[int], StackedReplica]

CACHED_STACK_WIDTHS = 4  # stack widths kept; a round usually needs one or two


class StackCache:
    """Idle stacked replicas by width, shared by the worker threads; the least recently used widths go first.

    A warm-up :meth:`reserve`\ s the stacks it is building: a worker that needs one of those widths waits for
    one of them, or for a stack of that width another worker gives back, whichever comes first, instead of
    building and tracing its own. Tracing costs seconds of Python that slow the warm-up's own trace down, and
    a round's two stacks trained one after the other take about as long as side by side (each uses both cores):
    the dashboard's 6 devices in two stacks of 3 (CNN) trained in 1.4 s side by side and 0.75 s alone, and
    each trace took 1.1 s.
    """

    def __init__(self, make_stack: MakeStack, widths: int = CACHED_STACK_WIDTHS):
        self._make_stack = make_stack
        self._widths = widths
        self._idle: OrderedDict[int, list[StackedReplica]] = OrderedDict()
        self._reserved: Counter = Counter()  # stacks a warm-up is building, by width
        self._changed = threading.Condition()

    def take(self, width: int) -> StackedReplica:
        """An idle replica of ``width`` devices, the first to be ready while a warm-up is building some (the
        warm-up's, or one given back), or else a new one (built outside the lock)."""
        with self._changed:
            self._changed.wait_for(lambda: self._idle.get(width) or not self._reserved[width])
            idle = self._idle.get(width)
            if idle:
                self._idle.move_to_end(width)
                return idle.pop()
        return self._make_stack(width)

    def make(self, width: int) -> StackedReplica:
        """A new replica of ``width`` devices, not in the cache."""
        return self._make_stack(width)

    def give_back(self, stack: StackedReplica) -> None:
        with self._changed:
            self._add_idle(stack)
            self._changed.notify_all()

    def reserve(self, widths: Sequence[int]) -> None:
        """Stacks of ``widths`` (one per entry) are being built: :meth:`take` waits for them."""
        with self._changed:
            self._reserved.update(widths)

    def fulfil(self, width: int, stack: StackedReplica | None) -> None:
        """One reserved stack of ``width`` is ready (``stack``), or will not come (None)."""
        with self._changed:
            self._reserved[width] -= 1
            if stack is not None:
                self._add_idle(stack)
            self._changed.notify_all()

    def _add_idle(self, stack: StackedReplica) -> None:
        self._idle.setdefault(stack.width, []).append(stack)
        self._idle.move_to_end(stack.width)
        while len(self._idle) > self._widths:
            self._idle.popitem(last=False)

    def idle_widths(self) -> Counter:
        with self._changed:
            return Counter({width: len(stacks) for width, stacks in self._idle.items()})


class Worker:
    """One worker thread's replica for single devices, built the first time it is needed, then reused."""

    def __init__(self, make_replica: Callable[[], ModelReplica]):
        self._make_replica = make_replica
        self._replica: ModelReplica | None = None

    @property
    def replica(self) -> ModelReplica:
        if self._replica is None:
            self._replica = self._make_replica()
        return self._replica


def blank_sample(spec: SampleSpec) -> tuple[np.ndarray, np.ndarray]:
    """One all-zero sample and target of the kind ``spec`` describes (the compiled functions' exact input types:
    TensorFlow 2.21 leaks a tf.function's lock when a call's inputs do not match its signature)."""
    return np.zeros((1, *spec.shape), spec.dtype), np.zeros(1, spec.target_dtype.as_numpy_dtype)


def trace_replica(replica: ModelReplica, batch_size: int) -> None:
    """Run the replica's compiled train and evaluate once on one blank sample, so they are traced."""
    x, y = blank_sample(replica.samples)
    replica.reset_optimizer(0.0)
    replica.train(x, y, epochs=1, batch_size=batch_size, seed=0)
    replica.evaluate(x, y)


def trace_stack(stack: StackedReplica, batch_size: int, uneven: bool = False) -> None:
    """Run the stack's compiled train and evaluate once on one blank sample per device, so they are traced;
    ``uneven`` also traces the training of devices with different numbers of local steps."""
    samples = [blank_sample(stack.samples)] * stack.width
    stack.load([np.zeros(v.shape[1:], np.float32) for v in stack.variables])
    stack.reset_optimizer(0.0)
    stack.train(samples, epochs=1, batch_size=batch_size, seeds=list(range(stack.width)))
    if uneven:  # the first device has two local steps, the others one
        x, y = blank_sample(stack.samples)
        longer = (np.repeat(x, batch_size + 1, axis=0), np.repeat(y, batch_size + 1, axis=0))
        stack.train([longer, *samples[1:]], epochs=1, batch_size=batch_size, seeds=list(range(stack.width)))
    stack.evaluate(samples)


def warm_up_order(cohorts: Sequence[tuple[int, float]], workers: int) -> list[int]:
    """The stack widths a warm-up builds for a round of ``cohorts`` (``(width, cost)``, as for
    :func:`devices.cohort.stacks_in_use`), one entry per stack, in the order it traces them.

    The width with the most work in the round comes first: its stacks are the round's longest chain. The CLI's
    10 devices in stacks of 4, 3 and 3 on two threads trace 3 first: one thread trains the first stack of 3 and
    then the second while the other waits for the stack of 4, so the round ends about when the 4 does; tracing
    4 first, its thread finishes before the first 3 and takes the second 3, whose stack is busy, so it builds
    and traces another stack of 3 in the middle of the round.
    """
    work: Counter = Counter()
    for width, cost in cohorts:
        work[width] += cost
    needed = stacks_in_use(cohorts, workers)
    return [width for width in sorted(needed, key=lambda w: (-work[w], -w)) for _ in range(needed[width])]


class WorkerPool:
    """Runs device training on ``workers`` threads, each holding one :class:`Worker`'s replica.

    With ``make_stack`` the pool can also train a cohort of devices as one
    stacked computation (:meth:`submit_cohort`), with replicas from a shared :class:`StackCache`.
    """

    def __init__(self, make_replica: Callable[[], ModelReplica], workers: int = 1, make_stack: MakeStack | None = None):
        self._workers: queue.SimpleQueue[Worker] = queue.SimpleQueue()
        for _ in range(workers):
            self._workers.put(Worker(make_replica))
        self.workers = workers
        self.stacks = make_stack is not None
        self._stack_cache = StackCache(make_stack) if make_stack is not None else None
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="device-worker")
        self._shut_down = threading.Event()  # a warm-up still tracing starts no further trace
        # warm-up traces run one at a time, so the first model is ready after one trace, not with the last:
        # tracing is Python holding the GIL (MLP stacks of 4 and 3 traced side by side: 1.25 s together at
        # load 1, 4.2 and 3.7 s each at load 6, against 0.6-1 s for one alone)
        self._trace_lock = threading.Lock()

    def _run(self, task: Callable[[Worker], object]) -> Future:
        def run():
            worker = self._workers.get()
            try:
                return task(worker)
            finally:
                self._workers.put(worker)

        return self._executor.submit(run)

    def _with_stack(self, width: int, task: Callable[[StackedReplica], object]) -> Future:
        if self._stack_cache is None:
            raise RuntimeError("this pool trains devices one by one")
        cache = self._stack_cache

        def run(worker: Worker):
            stack = cache.take(width)
            try:
                return task(stack)
            finally:
                cache.give_back(stack)

        return self._run(run)

    def submit(self, device: Device, instructions: TrainInstructions, checkpoint: Checkpoint) -> Future[EncodedUpdate]:
        return self._run(lambda worker: device.respond(instructions, worker.replica, checkpoint))

    def submit_cohort(
        self, devices: Sequence[Device], instructions: Sequence[TrainInstructions], checkpoints: Sequence[Checkpoint]
    ) -> Future[list[Outcome]]:
        """Train ``devices`` together; the future holds each device's update or failure, in order."""
        return self._with_stack(len(devices), lambda stack: train_cohort(devices, instructions, stack, checkpoints))

    def warm_up(
        self, cohorts: Sequence[tuple[int, float]], batch_size: int, uneven: bool = False,
        queued: Callable[[], None] = lambda: None,
    ) -> None:
        """Build and trace ahead of time what a round training ``cohorts`` needs: ``(width, cost)`` of each stack,
        in the order the round submits them (one by one: width 1); ``uneven``: some stack holds devices with
        different numbers of local steps. Returns when every trace is done; ``queued`` is called as soon as a
        round may be submitted: its tasks then use the warm-up's models, each as soon as its own is traced.

        Stacks: only as many of each width as the round runs at once, traced one after another in this
        thread (:func:`warm_up_order`) and handed to the workers as each is ready (a worker that needs a stack
        still being built waits for it). Replicas for devices trained one by one belong to the workers, so
        each worker traces its own, one at a time, ahead of the round's tasks queued behind.
        """
        if not self.stacks:
            count = min(len(cohorts), self.workers)
            futures = [self._run(lambda worker: self._one_at_a_time(trace_replica, worker.replica, batch_size))
                       for _ in range(count)]
            queued()
            wait(futures)
            return
        cache = self._stack_cache
        widths = warm_up_order(cohorts, self.workers)
        cache.reserve(widths)
        queued()
        built = 0
        try:
            for width in widths:
                if self._shut_down.is_set():
                    break
                stack = cache.make(width)
                self._one_at_a_time(trace_stack, stack, batch_size, uneven)
                cache.fulfil(width, stack)
                built += 1
        finally:
            for width_left in widths[built:]:  # nothing more is coming: a waiting worker builds its own
                cache.fulfil(width_left, None)

    def _one_at_a_time(self, trace: Callable[..., None], *args) -> None:
        with self._trace_lock:
            trace(*args)

    def shutdown(self, wait: bool = True) -> None:
        """Cancel queued work and release the workers; ``wait=False`` returns without waiting for a task that is
        already running (a warm-up trace nobody needs any more finishes on its own, then its thread ends)."""
        self._shut_down.set()
        self._executor.shutdown(wait=wait, cancel_futures=True)
