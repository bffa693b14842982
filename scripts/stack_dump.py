"""Print every thread's stack to this process's stderr (its log) on ``SIGUSR1``.

The launchers in ``scripts/`` call :func:`dump_stacks_on_signal` first, so a
SuperLink, SuperNode or ClientApp worker that seems stuck can be asked where it
waits without stopping it: ``kill -USR1 <pid>``. ``flower_app.loopback`` does
this to every process of a local deployment whose run does not finish in time.
Uses :mod:`faulthandler`, which writes from C: it answers even while Python's
main thread is blocked in a call.
"""

from __future__ import annotations

import faulthandler
import signal
import sys


def dump_stacks_on_signal() -> bool:
    """Register the dump on ``SIGUSR1`` (True), where the platform has it."""
    if not hasattr(signal, "SIGUSR1"):
        return False
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    return True
