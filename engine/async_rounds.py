"""FedBuff's asynchronous schedule: devices train continuously on a simulated clock; the server steps every K arrivals.

A discrete-event simulation over the in-process devices, with real training. When a device starts, it is
trained at once (for real, on this machine's worker pool) from the global model current at that moment;
its update then *arrives* at the server at ``start + steps x slowdown`` on the simulated clock
(:func:`engine.rounds.simulated_time`: local steps of a full-speed device, so the schedule does not depend
on how busy this machine happens to be, and synchronous rounds are timed the same way). Arrivals are processed in
simulated-time order from an event queue; each one joins the buffer, weighted later by its staleness (server
steps since its device started). When ``buffer_size`` (K) updates are buffered the server applies them: that
is one server step, reported as one :class:`~engine.results.RoundResult` (a "round" of the charts, the run
store and ``--json``), with each applied update's staleness and the simulated time the step took.

Rules that keep this well defined:

- At most ``devices_per_round`` devices (``fraction`` of the active ones, at least ``min_devices``) train at
  once: the paper's concurrency. The idle ones that start are drawn at random (reproducibly).
- A device adds at most one update to a buffer: after its update arrives (or is refused) it waits for the
  next server step before it starts again, so no device is counted twice in one step (and under local DP
  each device releases at most one update per step, which is what the accountant composes).
- When no device is still training (too few active devices to fill the buffer), the buffer is applied with
  what it holds; the step is divided by K all the same, so it moves the model less.
- Devices switched off lose their update in flight; switched on, they start at the next step. A stop keeps
  the buffer and the updates in flight for a later start; a resumed run (a new runner) starts every device
  afresh from the resumed model.

Over a transport that delivers replies as they come (``asynchronous``: Flower's
``flower_app.transport.GridTransport``, real devices) the clock is the wall clock instead: a start pushes
the train messages and returns, and the next arrival is whichever reply the transport hands over first
(:meth:`AsyncRoundRunner.next_flight`). Everything else (concurrency, one update per device per buffer,
staleness, the server step) is the same code.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from devices.messages import DeviceUpdate, EncodedUpdate, Weights, weights_nbytes
from engine.results import DeviceProblem, DeviceStatus, RoundResult
from engine.rounds import Arrivals, RoundRunner, simulated_time
from engine.strategies.base import AggregationSkipped
from engine.strategies.fedbuff import STALENESS
from engine.transport import Reply

ARRIVAL_WAIT = 1.0  # wall clock: seconds per wait for the transport's next reply (a stop is noticed between waits)


@dataclass(order=True)
class Flight:
    """One device's local training, from its start to its arrival at the server on the simulated clock."""

    arrival: float  # simulated time its reply reaches the server
    launch: int  # start order: breaks ties between equal arrival times reproducibly
    device_id: int = field(compare=False)
    version: int = field(compare=False)  # server steps applied when it started (the model it trained from)
    start_weights: Weights = field(compare=False, repr=False)
    reply: Reply | None = field(compare=False, repr=False)  # None: on the wall clock, not arrived yet


@dataclass
class Buffered:
    """An arrived, decoded update waiting in the buffer."""

    encoded: EncodedUpdate
    update: DeviceUpdate  # the device's model, reconstructed against the model it trained from
    flight: Flight


def rebase(model: Weights, start: Weights, current: Weights) -> Weights:
    """``current + (model - start)``: a device's delta moved onto the current global model."""
    return [c + (m - s) for m, s, c in zip(model, start, current)]


def concurrency(active: int, fraction: float, min_devices: int) -> int:
    """Devices training at once: ``fraction`` of the ``active`` ones, at least ``min_devices``, at most all."""
    return min(active, max(min_devices, math.ceil(fraction * active)))


def round_runner(strategy) -> type[RoundRunner]:
    """The loop ``strategy`` runs in: FedBuff's server steps, or synchronous rounds."""
    return AsyncRoundRunner if strategy.asynchronous else RoundRunner


class AsyncRoundRunner(RoundRunner):
    """Runs FedBuff's server steps; :meth:`run` has :class:`RoundRunner`'s signature (one call: one step)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = 0.0  # simulated time since this runner started (local steps of a full-speed device)
        self.step_clock = 0.0  # the clock at the last server step
        self.launches = 0
        self.flights: list[Flight] = []  # a heap, earliest arrival first
        self.buffer: list[Buffered] = []
        self.waiting: set[int] = set()  # devices that already sent an update since the last server step
        self.wall_clock = bool(getattr(self.transport, "asynchronous", False))  # real devices: real time
        self.started = time.monotonic()
        self.arrived: list[tuple[int, Reply, float]] = []  # wall clock: replies handed over (and when), not processed

    @property
    def buffer_size(self) -> int:
        return int(self.strategy.buffer_size)

    def run(
        self, server_round: int, weights: Weights, active: Sequence[int], checkpoint: Callable[[int], None],
        last: bool = False,
    ) -> tuple[Weights, RoundResult]:
        """Process arrivals until the buffer holds K updates (or no device is training), then apply it."""
        started = time.perf_counter()
        on = set(active)
        off = {f.device_id for f in self.flights if f.device_id not in on}
        self.flights = [f for f in self.flights if f.device_id in on]  # switched off: the update is lost
        if off and self.wall_clock:  # its reply, should it still come, must not pass for a later start's
            self.transport.forget(off)
            self.arrived = [a for a in self.arrived if a[0] not in off]
        heapq.heapify(self.flights)
        for flight in self.flights:
            self.on_status(flight.device_id, DeviceStatus.TRAINING, f"from model version {flight.version}")
        arrivals = Arrivals([], [])
        while True:
            arrivals.bytes_down += self.launch(server_round, weights, sorted(on), checkpoint)
            if len(self.buffer) >= self.buffer_size or not self.flights:
                break
            flight = self.next_flight(checkpoint)
            if flight is not None:
                self.arrive(server_round, flight, arrivals)
        trained = time.perf_counter()
        new_weights, applied = self.apply(server_round, weights, arrivals)
        epsilon = self.spend_privacy(len(applied) / max(len(on), 1))
        loss, accuracy, confusion, test_samples, scores = self.evaluate(new_weights, server_round, last)
        finished = time.perf_counter()
        elapsed, self.step_clock = self.clock - self.step_clock, self.clock
        devices = tuple(replace(self._device_result(b.encoded), staleness=server_round - 1 - b.flight.version)
                        for b in applied)
        return new_weights, RoundResult(
            round=server_round, global_loss=loss, global_accuracy=accuracy, seconds=finished - started,
            train_seconds=trained - started, eval_seconds=finished - trained,
            selected=tuple(d.device_id for d in devices), devices=devices,
            problems=tuple(sorted(arrivals.problems, key=lambda p: p.device_id)),
            bytes_down=arrivals.bytes_down, bytes_up=sum(b.encoded.nbytes for b in applied),
            confusion=confusion, epsilon=epsilon, raw_bytes_up=weights_nbytes(weights) * len(applied),
            sampling_rate=len(applied) / max(len(on), 1), test_samples=test_samples,
            global_mae=scores.mae if scores else None, global_r2=scores.r2 if scores else None,
            simulated_time=elapsed,
        )

    # -- starting devices ------------------------------------------------------------------
    def launch(self, server_round: int, weights: Weights, active: list[int], checkpoint: Callable[[int], None]) -> int:
        """Start idle devices (up to the concurrency) from ``weights``, training them now; bytes sent down."""
        busy = {f.device_id for f in self.flights}
        idle = [d for d in active if d not in busy and d not in self.waiting]
        free = concurrency(len(active), self.config.fraction, self.config.min_devices) - len(busy)
        if not idle or free <= 0:
            return 0
        rng = np.random.default_rng([self.config.seed, server_round, self.launches])
        chosen = sorted(int(d) for d in rng.choice(np.asarray(idle), size=min(free, len(idle)), replace=False))
        instructions = {d: self.instructions(server_round, d, weights, None) for d in chosen}
        for device_id in chosen:
            self.on_status(device_id, DeviceStatus.TRAINING, f"from model version {server_round - 1}")
        if self.wall_clock:  # pushed now, arriving when they arrive (next_flight)
            sent = self.transport.start(instructions)
            for device_id in chosen:
                self.flights.append(Flight(math.inf, self.launches, device_id, server_round - 1, weights, None))
                self.launches += 1
            return sent
        replies: dict[int, Reply] = {}
        sent = self.transport.collect(instructions, checkpoint, replies.__setitem__)
        for device_id in chosen:  # in id order, so equal arrival times break the same way every run
            reply = replies[device_id]
            arrival = self.clock + simulated_time(reply, self.transport.slowdown(device_id))
            heapq.heappush(self.flights, Flight(arrival, self.launches, device_id, server_round - 1, weights, reply))
            self.launches += 1
        return sent

    # -- arrivals and the server step -------------------------------------------------------
    def next_flight(self, checkpoint: Callable[[int], None]) -> Flight | None:
        """The next update to arrive: the earliest on the simulated clock, or on the wall clock the next reply
        the transport hands over (None: a reply from a device no longer in flight, e.g. switched off)."""
        if not self.wall_clock:
            return heapq.heappop(self.flights)
        while not self.arrived:
            replies = self.transport.arrivals(ARRIVAL_WAIT, checkpoint)
            now = time.monotonic() - self.started
            self.arrived.extend((device_id, reply, now) for device_id, reply in replies)
        device_id, reply, arrival = self.arrived.pop(0)
        flight = next((f for f in self.flights if f.device_id == device_id), None)
        if flight is None:
            return None
        self.flights.remove(flight)
        return replace(flight, arrival=arrival, reply=reply)

    def arrive(self, server_round: int, flight: Flight, arrivals: Arrivals) -> None:
        """Advance the clock to ``flight``'s arrival; check its update and buffer it (or report why not)."""
        self.clock = max(self.clock, flight.arrival)
        self.waiting.add(flight.device_id)
        if np.random.default_rng([self.config.seed, flight.launch, 1]).random() < self.config.dropout:
            self._problem(arrivals, DeviceProblem(flight.device_id, "dropped out",
                                                  "its update never arrived (simulated dropout)"))
            return
        self._receive(flight.device_id, flight.reply, arrivals)  # checks, deadline, status
        if not arrivals.updates:
            return
        encoded = arrivals.updates.pop()
        update, problem = self.decode(encoded, flight.start_weights)
        if problem is not None:
            self._problem(arrivals, DeviceProblem(flight.device_id, "rejected", problem))
            return
        self.buffer.append(Buffered(encoded, update, flight))

    def apply(self, server_round: int, weights: Weights, arrivals: Arrivals) -> tuple[Weights, list[Buffered]]:
        """The server step over the buffer: each delta rebased on ``weights``, tagged with its staleness."""
        applied = sorted(self.buffer, key=lambda b: b.flight.device_id)
        self.buffer, self.waiting = [], set()
        if not applied:
            return weights, []
        updates = [replace(b.update, weights=rebase(b.update.weights, b.flight.start_weights, weights),
                           extras={**b.update.extras, STALENESS: server_round - 1 - b.flight.version})
                   for b in applied]
        try:
            return self.aggregation.aggregate(server_round, weights, updates), applied
        except AggregationSkipped as skipped:
            arrivals.problems.extend(DeviceProblem(u.device_id, "not aggregated", str(skipped)) for u in updates)
            return weights, []
