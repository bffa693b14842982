"""``flower-supernode`` with a shorter wait between its pulls from the SuperLink.

Flower 1.42's SuperNode asks the SuperLink for work and, when there is none,
sleeps a fixed 3 s (``flwr/supernode/start_client_internal.py``); while a reply
is being computed it checks every 0.5 s. So every round starts up to 3 s after
the ServerApp sent it. Flower has no option for it; this launcher polls every
``--fleet-poll-interval`` seconds (default 0.1) right after the node handled a
message (the next round follows soon) and backs off while it stays idle (up to
1 s, see :class:`PollClock`), caps the other waits at that interval, retries
message parts that have not reached the SuperLink yet after that long too
(Flower: 1 s, doubling), and then runs Flower's own ``flower-supernode`` with
every other argument unchanged::

    python scripts/supernode.py --fleet-poll-interval 0.1 --superlink 192.168.1.20:9093 \\
        --root-certificates ca.crt --auth-supernode-private-key supernode-0 --isolation process ...

The cap applies only to that module's sleeps (not heartbeats or retries), and
only on the Flower version it was written for; on any other it warns and runs
``flower-supernode`` unchanged.
"""

from __future__ import annotations

import functools
import sys
import time
import types

EXPECTED_FLOWER = "1.42.0"
OPTION = "--fleet-poll-interval"
DEFAULT_SECONDS = 0.1
IDLE_WAIT = 3.0  # what Flower 1.42's SuperNode sleeps when the SuperLink has no message for it
IDLE_CAP_SECONDS = 1.0  # longest poll interval of an idle node
BACKOFF_SHARE = 0.1  # idle for t seconds: poll every 0.1 t (a message waits at most ~10% longer than it took)
TRANSFER_THREADS = 8  # as flower_app/polling.py: the parts of a message move on this many threads
WORKED_SECONDS = 0.5  # more than this between two idle waits: the node handled a message in between
LOCAL_WAIT_SECONDS = 0.01  # Flower's other waits check only this process's memory (a reply from its worker)


class PollClock(types.SimpleNamespace):
    """A stand-in for the ``time`` module of Flower's SuperNode loop, with its own ``sleep``.

    Flower's idle wait (``IDLE_WAIT``: no message at the SuperLink) becomes a poll that backs off: every
    ``fast`` seconds right after the node worked, then a ``BACKOFF_SHARE`` of the time it has been idle, up
    to ``idle_cap`` seconds. So a round that follows the last one's reply starts at once, and an idle node
    costs the SuperLink (and the machine) little. Any other wait (for the worker's reply, or a reply part, to
    appear in the node's in-memory state: no request) is capped at ``min(fast, LOCAL_WAIT_SECONDS)``, so a
    reply leaves for the SuperLink about 10 ms after the worker pushed it, not 0.1-0.5 s.
    """

    def __init__(self, fast: float, idle_cap: float = IDLE_CAP_SECONDS, clock=time.monotonic, sleep=time.sleep):
        super().__init__(**{name: getattr(time, name) for name in dir(time)
                            if not name.startswith("_") and name != "sleep"})
        self.fast, self.idle_cap, self._clock, self._sleep = fast, max(fast, idle_cap), clock, sleep
        self.idle_since: float | None = None
        self.woke = clock()

    def sleep(self, seconds: float) -> None:
        now = self._clock()
        if float(seconds) < IDLE_WAIT:
            self.idle_since = None
            self._sleep(min(float(seconds), self.fast, LOCAL_WAIT_SECONDS))
            return
        if self.idle_since is None or now - self.woke > WORKED_SECONDS:  # it handled a message since
            self.idle_since = now
        self._sleep(min(self.idle_cap, max(self.fast, BACKOFF_SHARE * (now - self.idle_since))))
        self.woke = self._clock()


def split_argv(argv: list[str]) -> tuple[float, list[str]]:
    """``--fleet-poll-interval X`` (or ``=X``) out of ``argv``; the rest is for flower-supernode."""
    seconds, rest, index = DEFAULT_SECONDS, [], 0
    while index < len(argv):
        arg = argv[index]
        if arg == OPTION or arg.startswith(OPTION + "="):
            raw = arg.partition("=")[2] if "=" in arg else (argv[index + 1] if index + 1 < len(argv) else "")
            index += 1 if "=" in arg else 2
            try:
                seconds = float(raw)
            except ValueError:
                seconds = -1.0
            if not 0.01 <= seconds <= 3:
                sys.exit(f"{OPTION} must be a number of seconds in [0.01, 3]; got {raw!r}")
            continue
        rest.append(arg)
        index += 1
    return seconds, rest


def main() -> None:
    from parent_watch import watch_parent  # scripts/: this script's own folder is on sys.path
    from stack_dump import dump_stacks_on_signal

    watch_parent()  # end with the dashboard or CLI that started it, even if it is killed outright
    dump_stacks_on_signal()  # kill -USR1: where a stuck process waits, into its log
    seconds, rest = split_argv(sys.argv[1:])
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supercore.version import package_version
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli.flower_supernode import flower_supernode

    if package_version == EXPECTED_FLOWER and getattr(start_client_internal, "time", None) is time:
        start_client_internal.time = PollClock(seconds)
        # Message parts not yet on the SuperLink: ask again every `seconds`, not after 1 s doubling to 10 s, and
        # without counting tries (Flower's 500 would be 50 s at this pace; a loaded SuperLink can take longer to
        # receive a model): Flower's 2 h limit stays, and a push that stalls for 3 min expires (its parts: not found).
        start_client_internal.pull_objects = functools.partial(
            start_client_internal.pull_objects, initial_backoff=seconds, backoff_cap=seconds,
            max_tries_per_object=None)
        # A message's parts (one request each) over TRANSFER_THREADS threads, not min(2, CPU cores).
        inflatable_utils.get_num_workers = lambda max_concurrent: max(max_concurrent, TRANSFER_THREADS)
    else:
        print(f"warning: Flower {package_version} is not {EXPECTED_FLOWER}; {OPTION} ignored", file=sys.stderr)
    sys.argv = ["flower-supernode", *rest]
    flower_supernode()


if __name__ == "__main__":
    main()
