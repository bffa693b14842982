"""Run one measurement in a fresh Python process, so that its peak memory is its own."""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_child(module: str, *args: str) -> dict:
    """Run ``python -m module --child ARGS`` and return the JSON object its last output line holds."""
    completed = subprocess.run([sys.executable, "-m", module, "--child", *args], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def next_round(federation):
    """Run exactly one more round of ``federation`` (started now, waited for) and return its result."""
    federation.set_rounds(len(federation.snapshot().history) + 1)
    federation.start()
    snapshot = federation.wait()
    if snapshot.status.value == "failed":
        raise RuntimeError(snapshot.message)
    return snapshot.history[-1]
