"""A SuperLink, SuperNode and ClientApp worker end when the process that started them is killed outright.

The parent is a real Python process that starts a loopback deployment (one
SuperNode, plain HTTP: what is tested is the launchers' watchdog,
``scripts/parent_watch.py``, not TLS) and is then SIGKILLed as soon as its
SuperLink listens, as a crashed dashboard would be: it cannot stop anything
itself. The SuperNode and its worker may still be importing Flower then; they
must end all the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from flower_app.loopback import PROJECT_ROOT
from flower_app.processes import processes_tagged
from scripts.parent_watch import running

PARENT = """
import json, sys, time
from flower_app.loopback import LocalDeployment

deployment = LocalDeployment(sys.argv[1], 1, secure=False).start()
print(json.dumps({"tag": deployment.tag, "pids": {name: p.pid for name, p in deployment.processes.items()}}),
      flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.timeout(120)
def test_launchers_end_when_their_parent_is_killed(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], cwd=PROJECT_ROOT, env=env,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    started = None
    try:
        line = parent.stdout.readline()
        assert line, f"the parent exited ({parent.poll()}) before starting its deployment"
        started = json.loads(line)
        pids = started["pids"]
        assert set(pids) == {"superlink", "supernode-0", "clientapp-0"}
        assert all(_alive(pid) for pid in pids.values())
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 40  # a watchdog's interval and grace, and Flower's imports on a busy machine
        while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {name: pid for name, pid in pids.items() if _alive(pid)}
        assert left == {}, f"still running after their parent was killed: {left}"
        assert processes_tagged(started["tag"]) == []  # nothing they started either
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in processes_tagged(started["tag"]) if started else []:
            os.kill(pid, signal.SIGKILL)


def test_a_killed_parent_that_is_not_yet_reaped_counts_as_gone():
    """Between its death and its reaping a parent is a zombie: signal 0 still reaches it, but its children
    are already someone else's. A launcher that starts in that moment must end, not take it for alive."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert running(child.pid)
        child.kill()
        deadline = time.monotonic() + 10
        while _alive(child.pid) and time.monotonic() < deadline:  # killed, not reaped: a zombie
            time.sleep(0.05)
        os.kill(child.pid, 0)  # still there for signal 0
        assert not running(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not running(child.pid)
