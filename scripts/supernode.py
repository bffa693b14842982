"""``flower-supernode`` with a shorter wait between its pulls from the SuperLink.

Flower 1.42's SuperNode asks the SuperLink for work and, when there is none,
sleeps a fixed 3 s (``flwr/supernode/start_client_internal.py``); while a reply
is being computed it checks every 0.5 s. So every round starts up to 3 s after
the ServerApp sent it. Flower has no option for it; this launcher caps those
sleeps at ``--fleet-poll-interval`` seconds (default 0.1), retries message parts
that have not reached the SuperLink yet after that long too (Flower: 1 s,
doubling), and then runs
Flower's own ``flower-supernode`` with every other argument unchanged::

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


def capped_time(limit: float) -> types.SimpleNamespace:
    """A stand-in for the ``time`` module whose ``sleep`` never waits more than ``limit`` seconds."""
    names = {name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    names["sleep"] = lambda seconds: time.sleep(min(float(seconds), limit))
    return types.SimpleNamespace(**names)


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
    seconds, rest = split_argv(sys.argv[1:])
    from flwr.supercore.version import package_version
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli.flower_supernode import flower_supernode

    if package_version == EXPECTED_FLOWER and getattr(start_client_internal, "time", None) is time:
        start_client_internal.time = capped_time(seconds)
        # Message parts not yet on the SuperLink: ask again every `seconds`, not after 1 s doubling to 10 s.
        start_client_internal.pull_objects = functools.partial(
            start_client_internal.pull_objects, initial_backoff=seconds, backoff_cap=seconds)
    else:
        print(f"warning: Flower {package_version} is not {EXPECTED_FLOWER}; {OPTION} ignored", file=sys.stderr)
    sys.argv = ["flower-supernode", *rest]
    flower_supernode()


if __name__ == "__main__":
    main()
