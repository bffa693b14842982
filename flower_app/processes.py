"""Processes of a local deployment: free ports, waiting for one, ending process groups, finding leftovers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

TAG_VARIABLE = "FL_FLOWER_DEPLOYMENT"
# The pid of the process that starts a deployment: scripts/parent_watch.py ends each launcher when it dies
PARENT_VARIABLE = "FL_PARENT_PID"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before listening on {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout:g} s")


def processes_tagged(tag: str, variable: str = TAG_VARIABLE) -> list[int]:
    """Pids of live processes whose environment carries ``variable=tag`` (Linux /proc), e.g. a deployment's
    tag, or ``PARENT_VARIABLE=pid``: the processes a deployment started by process ``pid`` runs."""
    needle = f"{variable}={tag}".encode()
    found: list[int] = []
    if not Path("/proc").is_dir():
        return found  # not Linux: no way to look
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie has exited; only its parent's bookkeeping is left
                    found.append(int(entry.name))
        except (FileNotFoundError, PermissionError, ProcessLookupError, IndexError):
            continue
    return found


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for signal ``signum`` (Linux: ``SigCgt`` in its status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next((line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0")
    return bool(int(caught, 16) >> (signum - 1) & 1)


def ask_for_stacks(pids: list[int]) -> list[int]:
    """``SIGUSR1`` to those of ``pids`` that catch it: the launchers (``scripts/stack_dump.py``) and our ServerApp
    (``flower_app.stack_log``) then print every thread's stack into their log. Any other process is left alone
    (the signal's default action would end it). Returns the pids signalled."""
    asked = []
    for pid in pids:
        if catches(pid, signal.SIGUSR1):
            try:
                os.kill(pid, signal.SIGUSR1)
                asked.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
    return asked


def terminate(process: subprocess.Popen, timeout: float = 15.0) -> None:
    terminate_all([process], timeout)


def terminate_all(processes: list[subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGTERM each process's group, SIGKILL what is left of it after ``timeout``, and reap the processes.

    Only groups of processes still running here are signalled: a reaped process's id is not ours any more.
    """
    running = [process for process in processes if process.poll() is None]
    for process in running:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the rest of its group, or itself if it ignored SIGTERM
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
