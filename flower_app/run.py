"""``flwr run`` that exits non-zero when the run fails: ``python -m flower_app.run . FEDERATION --stream ...``.

Flower 1.42's ``flwr run --stream`` exits 0 once the log stream ends, whatever
became of the run (``flwr.cli.log.start_stream`` never looks at its status),
and nothing a ServerApp does changes that: a ServerApp that raises only marks
the run ``finished:failed``. This wrapper passes its arguments to ``flwr run``
unchanged and, with ``--stream``, asks the SuperLink for the run's final status
(``flwr ls FEDERATION --run-id ID --format json``) once the stream ends. It
exits 0 for ``finished:completed``; otherwise it prints one line (the status
and Flower's status details, e.g. the ServerApp's one-line error) and exits 1.
Without ``--stream`` it only submits, like ``flwr run``, and exits with its code.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

COMPLETED = "finished:completed"
STATUS_WAIT_SECONDS = 30.0  # the SuperLink may mark the run finished just after the stream ends


def positionals(argv: list[str]) -> list[str]:
    """``flwr run``'s positional arguments (the app, then the federation) in ``argv``."""
    found, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = "=" not in arg and arg not in ("--stream",)  # every other option takes a value
        else:
            found.append(arg)
    return found


def run_id_of(output: str) -> int | None:
    match = re.search(r"Successfully started run (\d+)", output) or re.search(r'"run-id":\s*"?(\d+)', output)
    return int(match.group(1)) if match else None


def final_status(federation: list[str], run_id: int, wait: float = STATUS_WAIT_SECONDS) -> tuple[str, str]:
    """The run's status and status details as ``flwr ls`` reports them, once it is finished (or ``wait`` s)."""
    deadline = time.monotonic() + wait
    while True:
        listed = subprocess.run(["flwr", "ls", *federation, "--run-id", str(run_id), "--format", "json"],
                                capture_output=True, text=True)
        try:
            runs = json.loads(listed.stdout).get("runs", [])
        except json.JSONDecodeError:
            runs = []
        status, details = (str(runs[0].get("status", "")), str(runs[0].get("status-details", ""))) if runs \
            else (f"unknown (flwr ls: {(listed.stdout + listed.stderr).strip()[-300:]})", "")
        if status.startswith("finished") or time.monotonic() >= deadline:
            return status, details
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    process = subprocess.Popen(["flwr", "run", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    assert process.stdout is not None
    for line in process.stdout:  # shown as it streams, and kept to find the run id
        print(line, end="", flush=True)
        output.append(line)
    code = process.wait()
    if code != 0 or "--stream" not in argv:
        return code
    run_id = run_id_of("".join(output))
    if run_id is None:
        print("flwr run: no run was started (see above)", file=sys.stderr)
        return 1
    status, details = final_status(positionals(argv)[1:2], run_id)
    if status == COMPLETED:
        return 0
    print(f"run {run_id} {status}" + (f": {' '.join(details.split())}" if details else ""), file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
