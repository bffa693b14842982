"""Scratch folders of Flower deployments (``flower_app.scratch``): none is left behind by a process that ends.

Real processes: a child Python that makes one and exits normally (``atexit``
removes it), one that is SIGKILLed (its folder stays until the next
``scratch_folder`` of that prefix sweeps it), and this process's own folder.
A closed loopback federation removing its folder is checked in
``tests/test_flower_backend.py`` (its module deployment).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from flower_app.scratch import OWNER_FILE, scratch_folder, sweep

ROOT = Path(__file__).resolve().parents[1]
MAKE_ONE = """
import sys, time
from flower_app.scratch import scratch_folder
folder = scratch_folder("flower-test-", sys.argv[1])
print(folder.path, flush=True)
if sys.argv[2] == "hang":
    time.sleep(60)
"""


def _child(root: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    child = subprocess.Popen([sys.executable, "-c", MAKE_ONE, str(root), mode], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return child, Path(child.stdout.readline().strip())


def test_a_folder_is_removed_by_remove_and_its_exit_hook_goes_with_it(tmp_path):
    folder = scratch_folder("flower-test-", tmp_path)
    assert folder.path.is_dir() and (folder.path / OWNER_FILE).read_text() == str(os.getpid())
    (folder.path / "superlink.log").write_text("log")
    folder.remove()
    folder.remove()  # idempotent
    assert not folder.path.exists()


def test_a_process_that_exits_leaves_no_folder(tmp_path):
    child, path = _child(tmp_path, "exit")
    assert child.wait(timeout=30) == 0
    assert path.parent == tmp_path and not path.exists()


def test_a_killed_process_s_folder_is_swept_by_the_next_one_and_others_are_kept(tmp_path):
    child, killed = _child(tmp_path, "hang")
    assert killed.is_dir()
    assert sweep("flower-test-", tmp_path) == []  # its owner is alive
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    foreign = tmp_path / "flower-test-foreign"  # no owner file: not made here, never touched
    foreign.mkdir()
    other_prefix = scratch_folder("flower-other-", tmp_path)
    assert killed.is_dir()  # another prefix does not sweep it
    mine = scratch_folder("flower-test-", tmp_path)
    assert not killed.exists() and foreign.is_dir() and mine.path.is_dir() and other_prefix.path.is_dir()
    mine.remove()
    other_prefix.remove()
