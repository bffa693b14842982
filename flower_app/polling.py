"""A ServerApp ``Grid`` that waits for replies with a short poll instead of Flower's fixed 3 s.

Flower 1.42's deployment grid (``flwr.superlink.grid.http_grid.HttpGrid``)
sleeps 3 s between pulls while it waits for the replies of a round, so a round
ends up to 3 s after its last device answered. :class:`PollingGrid` wraps any
grid and does the same push-then-pull with ``interval`` seconds between pulls
(``FL_FLOWER_POLL_SECONDS`` in the ServerApp's environment, default 0.05) right
after the push and after each reply, backing off while no reply comes
(:func:`pull_wait`); everything else goes to the wrapped grid unchanged.

:func:`fast_object_pulls` does the same for the parts of a reply that are still
on their way to the SuperLink when the ServerApp pulls it: Flower 1.42 asks
again after 1 s (doubling up to 10 s); this retries every ``interval``, and
moves a message's parts over more threads (:func:`transfer_threads`).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Iterable
from logging import INFO

from flwr.app import Message
from flwr.common.logger import log
from flwr.serverapp import Grid

POLL_VARIABLE = "FL_FLOWER_POLL_SECONDS"
DEFAULT_POLL_SECONDS = 0.05


def poll_seconds(environ: dict[str, str] | None = None) -> float:
    """The poll interval from ``FL_FLOWER_POLL_SECONDS`` (0.001-60 s), else the default."""
    raw = (os.environ if environ is None else environ).get(POLL_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_POLL_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.001 <= value <= 60:
        raise ValueError(f"{POLL_VARIABLE} must be a number of seconds in [0.001, 60]; got {raw!r}")
    return value


EXPECTED_FLOWER = "1.42.0"
BACKOFF_SHARE = 0.1  # no reply for t seconds: pull every 0.1 t (a reply waits at most ~10% longer than it took)
MAX_PULL_SECONDS = 1.0
WAITING_NOTE_SECONDS = 30.0  # no reply for this long: log which nodes the grid still waits for


def pull_wait(interval: float, quiet: float) -> float:
    """Seconds until the next pull: ``interval`` right after the push or a reply, then a ``BACKOFF_SHARE`` of
    the ``quiet`` seconds since, up to ``MAX_PULL_SECONDS``: fewer requests to the SuperLink during long rounds,
    whose machine trains the devices of a local deployment."""
    return min(max(interval, MAX_PULL_SECONDS), max(interval, BACKOFF_SHARE * quiet))


def fast_object_pulls(interval: float) -> bool:
    """Retry missing reply parts after ``interval`` s in this process's HttpGrid (True: applied).

    Only on the Flower version this was written for; elsewhere nothing changes.
    """
    from flwr.superlink.grid import http_grid
    from flwr.supercore.version import package_version

    from flwr.supercore.inflatable import inflatable_utils

    pull = getattr(http_grid, "pull_objects", None)
    if package_version != EXPECTED_FLOWER or pull is None or isinstance(pull, functools.partial):
        return False
    # tries not counted: Flower's 500 would be 25-50 s at this pace, less than a loaded machine can take to
    # deliver a reply; Flower's 2 h limit stays, and a push that stalls for 3 min expires (its parts: not found)
    http_grid.pull_objects = functools.partial(pull, initial_backoff=interval, backoff_cap=interval,
                                               max_tries_per_object=None)
    inflatable_utils.get_num_workers = transfer_threads
    return True


TRANSFER_THREADS = 8


def transfer_threads(max_concurrent: int) -> int:
    """Threads pushing or pulling a message's parts: at least ``TRANSFER_THREADS``.

    Flower 1.42 uses ``min(2, CPU cores)``, and each part is one request, so a
    model of 8 layers (16 parts) crosses each hop in 8 sequential round trips;
    they wait on the network and the other side, not on this CPU.
    """
    return max(max_concurrent, TRANSFER_THREADS)


class PollingGrid(Grid):
    """``grid`` with a ``send_and_receive`` that pulls every ``interval`` seconds."""

    def __init__(self, grid: Grid, interval: float = DEFAULT_POLL_SECONDS, clock=time.monotonic, sleep=time.sleep):
        self.grid = grid
        self.interval = interval
        self._clock, self._sleep = clock, sleep
        fast_object_pulls(interval)

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self):
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages``, then pull until every one has a reply or ``timeout`` seconds passed.

        Logs how long the push took, when it ended (wall clock, to line up with the nodes' logs) and how
        long after it each reply arrived: where a round's time goes between the server and its devices.
        """
        started = self._clock()
        messages = list(messages)
        message_ids = list(self.push_messages(messages))
        destination = {mid: message.metadata.dst_node_id for mid, message in zip(message_ids, messages)}
        waiting = set(message_ids)
        pushed, pushed_at, count = self._clock(), time.time(), len(waiting)
        deadline = None if timeout is None else pushed + timeout
        replies: list[Message] = []
        arrivals: list[float] = []
        last_event = last_note = pushed
        while waiting:
            received = list(self.pull_messages(waiting))
            replies.extend(received)
            now = self._clock()
            arrivals += [now - pushed] * len(received)
            last_event = now if received else last_event
            waiting -= {reply.metadata.reply_to_message_id for reply in received}
            if not waiting or (deadline is not None and now >= deadline):
                break
            if now - max(last_event, last_note) >= WAITING_NOTE_SECONDS:  # a stalled round says who it waits for
                last_note = now
                log(INFO, "grid: %.0f s after the push, still waiting for node(s) %s",
                    now - pushed, " ".join(str(destination.get(mid, "?")) for mid in sorted(waiting)))
            self._sleep(pull_wait(self.interval, now - last_event))
        log(INFO, "grid: pushed %d message(s) in %.3f s, at %.3f; replies after %s s",
            count, pushed - started, pushed_at, " ".join(f"{a:.3f}" for a in arrivals))
        return replies

    def __getattr__(self, name: str):
        if name == "grid":
            raise AttributeError(name)
        return getattr(self.grid, name)  # anything a later Flower adds to its grids
