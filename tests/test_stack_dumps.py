"""A process that seems stuck tells where it waits on SIGUSR1 and keeps running (scripts/stack_dump.py for the
launchers, flower_app.stack_log for the ServerApp)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

PROGRAM = """
import sys, time
sys.path.insert(0, {scripts!r})
{install}
def waiting_for_a_reply():
    print("ready", flush=True)
    time.sleep(30)
waiting_for_a_reply()
"""
LAUNCHER = "from stack_dump import dump_stacks_on_signal\nassert dump_stacks_on_signal()"
SERVER_APP = "from flower_app.stack_log import log_stacks_on_signal\nassert log_stacks_on_signal()"


@pytest.mark.parametrize("install", [LAUNCHER, SERVER_APP], ids=["launcher", "server-app"])
def test_sigusr1_prints_the_waiting_stack_and_the_process_goes_on(install):
    from flower_app.processes import ask_for_stacks

    process = subprocess.Popen([sys.executable, "-c", PROGRAM.format(scripts=str(SCRIPTS), install=install)], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sleeper = subprocess.Popen(["sleep", "30"])  # catches nothing: SIGUSR1 would end it
    try:
        assert process.stdout.readline().strip() == "ready"
        assert ask_for_stacks([process.pid, sleeper.pid]) == [process.pid]  # only processes that catch it
        time.sleep(1.0)
        assert process.poll() is None and sleeper.poll() is None  # the default action would have ended them
    finally:
        sleeper.kill()
        sleeper.wait()
        process.terminate()
        stdout, stderr = process.communicate(timeout=30)
    assert "waiting_for_a_reply" in stderr, stderr[-2000:]
