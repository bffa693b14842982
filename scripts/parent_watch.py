"""End this process (and its process group) when the process that started it dies, even by SIGKILL.

The dashboard and the CLI start a SuperLink, SuperNodes and ClientApp workers
(``flower_app.loopback.LocalDeployment``) in new sessions, so that they can end
each one with its whole process group. A parent that is killed outright
(``kill -9`` of Streamlit, an out-of-memory kill) never gets to do that, and the
SuperLink would keep its port and its runs. So the launchers in ``scripts/``
call :func:`watch_parent` first: when ``$FL_PARENT_PID`` names the process that
started them, a daemon thread checks every ``interval`` seconds that it is
still their parent (``os.getppid()``: a child whose parent died is re-parented
to init or a sub-reaper) and, once it is not, sends SIGTERM to its own process
group (a SuperNode's ClientApp processes with it), then SIGKILL after ``grace``
seconds if anything is left.

Why not Linux's ``PR_SET_PDEATHSIG``: it fires when the *thread* that started
the child ends, not the process, and Streamlit creates the federation in a
script-runner thread that ends after every rerun: the SuperLink would die with
it. The watchdog also works on any POSIX system.
"""

from __future__ import annotations

import os
import signal
import threading
import time

PARENT_VARIABLE = "FL_PARENT_PID"  # flower_app.processes.PARENT_VARIABLE: the pid of the starting process
INTERVAL_SECONDS = 0.5
GRACE_SECONDS = 5.0


def parent_gone(expected: int) -> bool:
    """Whether this process's parent is no longer ``expected`` (it died; the process was re-parented)."""
    return os.getppid() != expected


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited. A parent killed a moment ago is a zombie until its
    own parent reaps it: signal 0 still reaches it, but its children have already been re-parented."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False  # gone meanwhile
    except (OSError, IndexError):
        return True  # no /proc (not Linux) or an unexpected line: signal 0 is all there is


def end_own_group(grace: float = GRACE_SECONDS) -> None:
    """SIGTERM this process's group (itself alone when it leads none), then SIGKILL after ``grace`` seconds."""
    group = os.getpgid(0)
    leader = group == os.getpid()

    def send(signal_number: int) -> None:
        try:
            if leader:
                os.killpg(group, signal_number)
            else:
                os.kill(os.getpid(), signal_number)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    time.sleep(grace)
    send(signal.SIGKILL)


def watch_parent(interval: float = INTERVAL_SECONDS, grace: float = GRACE_SECONDS) -> threading.Thread | None:
    """Start the watchdog if ``$FL_PARENT_PID`` is this process's parent's pid; the thread, or None."""
    try:
        expected = int(os.environ.get(PARENT_VARIABLE, ""))
    except ValueError:
        return None
    if expected != os.getppid():
        if not running(expected):  # it died before this process got here: end now
            end_own_group(grace)
        return None  # else started some other way (by hand, by a wrapper): nothing to watch

    def watch() -> None:
        while not parent_gone(expected):
            time.sleep(interval)
        end_own_group(grace)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
