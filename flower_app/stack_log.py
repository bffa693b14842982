"""Log every thread's stack on ``SIGUSR1``: where a ServerApp that seems stuck is waiting.

A ServerApp's output reaches the user through Flower's log upload (``flwr run
--stream``), not a file, so the stacks go through Flower's logger rather than
:mod:`faulthandler` (which ``scripts/stack_dump.py`` uses for the launchers,
whose stderr is their log). ``flower_app.loopback`` signals every process of a
local deployment whose run does not finish in time.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from logging import WARNING

from flwr.common.logger import log


def log_stacks(signum=None, frame=None) -> None:  # a signal handler's signature
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, top in sys._current_frames().items():  # pylint: disable=protected-access
        log(WARNING, "stack of thread %s:\n%s", names.get(ident, ident), "".join(traceback.format_stack(top)))


def log_stacks_on_signal() -> bool:
    """Install :func:`log_stacks` for ``SIGUSR1`` (True); only the main thread may install handlers."""
    if not hasattr(signal, "SIGUSR1") or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGUSR1, log_stacks)
    return True
