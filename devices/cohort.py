"""Devices of one round trained together as a stack, then each sending its own update.

The stack is only the simulator's way of running many devices' local training
at once: each device still trains on nothing but its own samples, starts from
the model it received, and packages its own update (faults, clipping,
compression, masking) exactly as when it trains alone.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from typing import Mapping, Sequence

from devices.device import Device
from devices.faults import SimulatedCrash
from devices.messages import EncodedUpdate, TrainInstructions
from devices.personal import personalize_stack, starting_weights
from devices.stacked import StackedReplica
from devices.trainer import Checkpoint

Outcome = EncodedUpdate | Exception


def plan_cohorts(
    local_steps: Mapping[int, int], max_width: int, workers: int, samples: Mapping[int, int] | None = None
) -> list[list[int]]:
    """Split devices into stacks of at most ``max_width`` devices with similar numbers of local steps.

    A stack costs its width times its longest device's steps, so devices are
    sorted by steps before they are cut into stacks, and among equal steps by
    their ``samples`` (training samples, when given): a stack's short last batch
    runs at its fullest device's width, so devices whose last batches are
    alike go together. There are at least ``workers`` stacks (when there are
    that many devices) so every worker thread has one.
    """
    samples = samples or {}
    order = sorted(local_steps, key=lambda d: (-local_steps[d], -samples.get(d, 0), d))
    if not order:
        return []
    count = max(min(workers, len(order)), math.ceil(len(order) / max_width))
    size, extra = divmod(len(order), count)
    cohorts, start = [], 0
    for i in range(count):
        end = start + size + (i < extra)
        cohorts.append(sorted(order[start:end]))
        start = end
    return cohorts


def stacks_in_use(cohorts: Sequence[tuple[int, float]], workers: int) -> Counter:
    """How many stacks of each width a round trains at the same time: ``cohorts`` are ``(width, cost)`` in the
    order they are submitted, each started by the first of ``workers`` threads to become free.

    The cost is the stack's width times its longest device's steps, as :func:`plan_cohorts` counts it. A stack
    that ends when another starts hands its replica over, so 10 devices in stacks of 4, 3 and 3 on two threads
    need one stack of each width (the second stack of 3 follows the first), not two of width 3. This is what the
    warm-up builds and traces; a round whose stacks end in another order builds what it lacks.
    """
    free = [(0.0, worker) for worker in range(max(workers, 1))]
    running: list[tuple[float, int, float]] = []  # (start, width, end) of every stack
    for width, cost in cohorts:
        start, worker = heapq.heappop(free)
        running.append((start, width, start + cost))
        heapq.heappush(free, (start + cost, worker))
    needed: Counter = Counter()
    for start, width, _ in running:
        at_once = sum(1 for s, w, e in running if w == width and s <= start < e)
        needed[width] = max(needed[width], at_once)
    return needed


def train_cohort(
    devices: Sequence[Device],
    instructions: Sequence[TrainInstructions],
    stack: StackedReplica,
    checkpoints: Sequence[Checkpoint],
) -> list[Outcome]:
    """Train ``devices`` (one per slot of ``stack``) on their own data; each device's encoded update or failure.

    All devices must have received the same model and training settings, as
    they do within a round. ``checkpoints[i]`` is device i's checkpoint: a
    device that crashes there is reported as failed while the others go on.
    """
    if stack.width != len(devices):
        raise ValueError(f"a stack of width {stack.width} cannot train {len(devices)} devices")
    first = instructions[0]
    failures: list[Exception | None] = [None] * len(devices)
    totals = [device.local_steps(first) for device in devices]
    guards = [device.guarded(instr, checkpoint) for device, instr, checkpoint in zip(devices, instructions, checkpoints)]

    def stack_checkpoint(steps_done: int) -> None:
        for i, guard in enumerate(guards):
            if failures[i] is None:
                try:
                    guard(min(steps_done, totals[i]))
                except SimulatedCrash as crash:
                    failures[i] = crash

    stack.load(first.weights)
    stack.reset_optimizer(first.learning_rate, [d.optimizer_state(i) for d, i in zip(devices, instructions)]
                          if first.keep_optimizer_state else None)
    tests = [(d.data.x_test, d.data.y_test) for d in devices]
    received = stack.evaluate(tests)
    starts = [starting_weights(device, instr) for device, instr in zip(devices, instructions)]
    if any(start is not instr.weights for start, instr in zip(starts, instructions)):  # FedPer's own heads
        stack.load_each(starts, starts)
    trained = stack.train(
        [(d.data.x_train, d.data.y_train) for d in devices],
        epochs=first.local_epochs,
        batch_size=first.batch_size,
        seeds=[instr.seed for instr in instructions],
        checkpoint=stack_checkpoint,
        proximal_mu=first.proximal_mu,
        corrections=[device.correction(instr) for device, instr in zip(devices, instructions)],
    )
    local = stack.evaluate(tests)
    states = stack.optimizer_states() if first.keep_optimizer_state else [None] * len(devices)
    models = stack.get_weights()
    kept = [(device.head, device.personal_model) for device in devices]
    personal = personalize_stack(devices, instructions, stack, models, local, lambda _: stack_checkpoint(max(totals)))
    for device, state, failure in zip(devices, kept, failures):
        if failure is not None:  # a device that crashed keeps the personal state it had, as when training alone
            device.head, device.personal_model = state
    outcomes: list[Outcome] = []
    for i, (device, instr, weights) in enumerate(zip(devices, instructions, models)):
        if failures[i] is not None:
            outcomes.append(failures[i])
            continue
        if states[i] is not None:
            device.keep_optimizer_state(instr, states[i])
        try:
            report = device.report(instr, weights, trained[i], received[i], local[i], personal[i])
            outcomes.append(device.encode(instr, report))
        except Exception as error:  # one device's bad update must not sink the others
            outcomes.append(error)
    return outcomes
