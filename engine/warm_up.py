"""Round 1 without its start-up cost: build and trace what it needs while the user is still reading the page.

A federation's first round would otherwise build its devices' stacks, trace
their compiled training and evaluation, and run the server's evaluation on
each batch shape for the first time: seconds of Python before any training.
:class:`WarmUp` does that in a background thread from "create" on. Round 1
waits only until the warm-up has decided which stacks to build (milliseconds);
each of its stacks then waits for its own trace (``devices.pool.StackCache``),
not for the whole warm-up.
"""

from __future__ import annotations

import threading
from typing import Sequence

from devices.messages import Weights
from devices.pool import WorkerPool
from devices.trainer import EVAL_BATCH
from engine.evaluation import warm_up_samples
from engine.rounds import RoundRunner
from engine.transport import InProcessTransport


def round_one_cohorts(runner: RoundRunner, transport: InProcessTransport, devices: Sequence, weights: Weights
                      ) -> tuple[list[tuple[int, int]], bool]:
    """Round 1's stacks as ``(width, steps of its devices)``, in the order the round submits them, and whether
    some stack holds devices with different numbers of local steps (the masked step variant is traced too)."""
    selected = runner.select(1, range(len(devices)))
    instructions = {d: runner.instructions(1, d, weights, None) for d in selected}
    groups = transport.training_groups(instructions)
    steps = {d: devices[d].local_steps(instructions[d]) for d in selected}
    uneven = any(len({steps[d] for d in group}) > 1 for group in groups)
    return [(len(group), len(group) * max(steps[d] for d in group)) for group in groups], uneven


class WarmUp:
    """Builds and traces round 1's stacks (or replicas) and warms the server's evaluation, in its own thread.

    Everything here is an optimisation: a failure is ignored, and shows up, reported, in the round itself.
    """

    def __init__(self, runner: RoundRunner, transport: InProcessTransport, devices: Sequence, weights: Weights,
                 pool: WorkerPool | None, batch_size: int, rounds: int | None):
        self._runner, self._transport, self._devices, self._weights = runner, transport, devices, weights
        self._pool, self._batch_size, self._rounds = pool, batch_size, rounds
        self._planned = threading.Event()  # the warm-up's stacks are reserved: round 1 may be submitted
        self._evaluation_lock = threading.Lock()
        self._evaluated = False
        self._closed = threading.Event()
        self.thread = threading.Thread(target=self._run, name="federation-warm-up", daemon=True)
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait until everything is traced (at most ``timeout`` seconds)."""
        self.thread.join(timeout)

    def close(self) -> None:
        """Start no further trace and wait for the one under way (seconds at most): a process must not exit
        while a thread is inside TensorFlow, or the C++ runtime aborts it ("FATAL: exception not rethrown")."""
        self._closed.set()
        self.thread.join()

    def before_round_one(self) -> None:
        """What round 1 waits for: the warm-up's plan (its stacks then wait for their own traces) and the server's
        evaluation warm-up, done here if the warm-up thread has not got to it yet."""
        self._planned.wait()
        self._warm_up_evaluation()

    def _run(self) -> None:
        try:
            if self._pool is not None:  # devices elsewhere (Flower): only the server's evaluation runs here
                cohorts, uneven = round_one_cohorts(self._runner, self._transport, self._devices, self._weights)
                self._pool.warm_up(cohorts, self._batch_size, uneven, queued=self._planned.set)
        except Exception:  # only an optimisation (see the class)
            pass
        finally:
            self._planned.set()
        if not self._closed.is_set():
            self._warm_up_evaluation()

    def _warm_up_evaluation(self) -> None:
        """Evaluate the server's model once on every batch shape round 1's evaluation uses, the first time this
        is called: by the warm-up after the stacks, or by round 1 before it starts, whichever comes first (the
        round's stacks are still tracing then, and a trace is seconds: this one is hidden behind them). The
        first run of a shape allocates its activations, hundreds of MB for the CNN."""
        with self._evaluation_lock:
            if self._evaluated:
                return
            self._evaluated = True
            try:
                test = self._runner.test_sets.for_round(1, last=self._rounds == 1)
                shapes = warm_up_samples(len(test.y), EVAL_BATCH)
                self._runner.evaluator.evaluate(test.x[:shapes], test.y[:shapes])
            except Exception:  # only an optimisation (see the class)
                pass
