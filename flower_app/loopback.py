"""A whole Flower deployment on one machine: a SuperLink, N SuperNodes and ``flwr run``, over 127.0.0.1.

Real processes with real network traffic, insecure (no TLS) and on free ports,
for tests and measurements; see the README for a deployment across machines.
Every process gets its own ``FLWR_HOME`` under ``workdir`` (as if on its own
machine) and is started in a new session, so :meth:`LocalDeployment.stop` can
end each one with its whole process group. All of them, and everything they
start (SuperExec, ServerApp and ClientApp processes), carry a unique
environment tag: :meth:`LocalDeployment.leftovers` finds any that survive.

``python -m flower_app.loopback --supernodes 2 --rounds 3`` runs one
deployment and prints its rounds next to the in-process engine's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TAG_VARIABLE = "FL_FLOWER_DEPLOYMENT"
CONNECTION = "loopback"


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


def toml_value(value: object) -> str:
    """A run-config value as ``flwr run --run-config`` parses it (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def run_config_arg(values: Mapping[str, object]) -> str:
    return " ".join(f"{key}={toml_value(value)}" for key, value in values.items())


def processes_tagged(tag: str) -> list[int]:
    """Pids of live processes whose environment carries ``TAG_VARIABLE=tag`` (Linux /proc)."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
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


@dataclass
class RunOutcome:
    run_id: int | None
    returncode: int
    seconds: float
    output: str
    rounds: list[dict] = field(default_factory=list)  # the results-file lines


class LocalDeployment:
    """Start with ``with LocalDeployment(workdir, 2) as deployment: deployment.run({...})``."""

    def __init__(
        self,
        workdir: str | Path,
        num_supernodes: int,
        data_dir: str | None = None,
        node_configs: list[dict[str, object]] | None = None,
        project_root: Path = PROJECT_ROOT,
        startup_timeout: float = 60.0,
    ):
        self.workdir = Path(workdir).resolve()
        self.num_supernodes = num_supernodes
        data_dir = data_dir or os.environ.get("FL_DATA_DIR")
        self.data_dir = os.path.abspath(data_dir) if data_dir else None  # processes run in other folders
        self.node_configs = node_configs or [
            {"partition-id": i, "num-partitions": num_supernodes} for i in range(num_supernodes)
        ]
        self.project_root = project_root
        self.startup_timeout = startup_timeout
        self.tag = uuid.uuid4().hex
        self.port = 0
        self.processes: dict[str, subprocess.Popen] = {}
        self._logs: list = []

    # -- environment -------------------------------------------------------------------
    def env(self, home: str) -> dict[str, str]:
        env = dict(os.environ)
        flwr_home = self.workdir / home
        flwr_home.mkdir(parents=True, exist_ok=True)
        bin_dir = str(Path(sys.executable).parent)
        env.update(
            {
                "FLWR_HOME": str(flwr_home),
                "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
                TAG_VARIABLE: self.tag,
            }
        )
        # The app's code reaches the processes inside the FAB that `flwr run` builds, not via PYTHONPATH.
        env.pop("PYTHONPATH", None)
        if self.data_dir:
            env["FL_DATA_DIR"] = self.data_dir
        return env

    def _start(self, name: str, command: list[str], home: str) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("wb")
        self._logs.append(log)
        process = subprocess.Popen(
            command, cwd=self.workdir, env=self.env(home), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> "LocalDeployment":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        superlink = self._start(
            "superlink",
            ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
             "--disable-runtime-dependency-installation"],
            "superlink-home",
        )
        wait_for_port(self.port, self.startup_timeout, superlink)
        for index, node_config in enumerate(self.node_configs):
            self._start_supernode(index, node_config)
        cli_home = self.workdir / "cli-home"
        cli_home.mkdir(parents=True, exist_ok=True)
        (cli_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        return self

    def _start_supernode(self, index: int, node_config: Mapping[str, object]) -> subprocess.Popen:
        config = " ".join(f"{k}={toml_value(v)}" for k, v in node_config.items())
        return self._start(
            f"supernode-{index}",
            ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.port}",
             "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", config],
            f"supernode-{index}-home",
        )

    def add_supernode(self, node_config: Mapping[str, object]) -> str:
        """Start one more SuperNode while the deployment runs (a device joining mid-run); its process name."""
        index = len([name for name in self.processes if name.startswith("supernode-")])
        self._start_supernode(index, node_config)
        return f"supernode-{index}"

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI from the project root against this deployment."""
        return subprocess.run(
            ["flwr", *args], cwd=self.project_root, env=self.env("cli-home"), capture_output=True,
            text=True, timeout=timeout, start_new_session=True,
        )

    def run(self, run_config: Mapping[str, object], timeout: float = 300.0) -> RunOutcome:
        """``flwr run . loopback --stream`` and wait for the run to end; reads ``results-file`` if set."""
        started = time.perf_counter()
        command = ["flwr", "run", ".", CONNECTION, "--stream"]
        if run_config:
            command += ["--run-config", run_config_arg(run_config)]
        process = subprocess.Popen(
            command, cwd=self.project_root, env=self.env("cli-home"), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.processes[f"flwr-run-{len(self.processes)}"] = process
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _terminate(process)
            output = process.communicate()[0]
            raise TimeoutError(f"flwr run did not finish within {timeout:g} s:\n{output[-4000:]}") from None
        seconds = time.perf_counter() - started
        (self.workdir / "flwr-run.log").write_text(output)
        match = re.search(r"Successfully started run (\d+)", output)
        rounds = []
        results_file = run_config.get("results-file")
        if results_file and Path(str(results_file)).exists():
            rounds = [json.loads(line) for line in Path(str(results_file)).read_text().splitlines() if line]
        return RunOutcome(int(match.group(1)) if match else None, process.returncode, seconds, output, rounds)

    def run_status(self, run_id: int) -> str:
        """The run's status as ``flwr ls`` reports it, e.g. ``finished:completed``."""
        listed = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            runs = json.loads(listed.stdout).get("runs", [])
        except json.JSONDecodeError:
            return f"unknown ({listed.stdout[-500:]} {listed.stderr[-500:]})"
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def stop(self, timeout: float = 15.0) -> list[int]:
        """End every process group, then return the pids of tagged processes still alive (killed)."""
        # SuperNodes first (they sign off at the SuperLink), then the SuperLink.
        _terminate_all([p for name, p in self.processes.items() if name != "superlink"], timeout)
        _terminate_all([p for name, p in self.processes.items() if name == "superlink"], timeout)
        for log in self._logs:
            log.close()
        deadline = time.monotonic() + timeout  # SuperExec/ServerApp/ClientApp notice their parent is gone
        while (left := processes_tagged(self.tag)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left

    def __enter__(self) -> "LocalDeployment":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _terminate(process: subprocess.Popen, timeout: float = 15.0) -> None:
    _terminate_all([process], timeout)


def _terminate_all(processes: list[subprocess.Popen], timeout: float = 15.0) -> None:
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


# -- measurement: the same workload over Flower and in-process ------------------------------------
def in_process_rounds(
    run_config: Mapping[str, object], num_devices: int, data_dir: str | None, workers: int | None = None
) -> list[dict]:
    """The same workload on the in-process engine (``workers`` threads; None: the engine's default)."""
    from engine.federation import Federation
    from flower_app.config import federation_config

    config = federation_config(run_config, num_devices=num_devices, data_dir=data_dir)
    if workers is not None:
        config = config.with_changes(workers=workers)
    snapshot = Federation(config).run_to_end()
    return [{"round": r.round, "global_accuracy": r.global_accuracy, "seconds": r.seconds,
             "train_seconds": r.train_seconds} for r in snapshot.history]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flower_app.loopback",
        description="Run the Flower app on a SuperLink and N SuperNodes on 127.0.0.1, "
                    "then the same workload in-process, and print seconds per round.",
    )
    parser.add_argument("--supernodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=3000)
    parser.add_argument("--test-samples", type=int, default=1000)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--workdir", default=None, help="default: a new folder under /tmp")
    parser.add_argument("--skip-in-process", action="store_true")
    args = parser.parse_args(argv)

    import tempfile

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="flower-loopback-"))
    run_config = {
        "num-server-rounds": args.rounds, "model": args.model, "train-samples": args.train_samples,
        "test-samples": args.test_samples, "min-devices": args.supernodes,
        "results-file": str(workdir / "rounds.jsonl"),
    }
    with LocalDeployment(workdir, args.supernodes) as deployment:
        outcome = deployment.run(run_config)
        left = deployment.stop()
    if outcome.returncode != 0 or len(outcome.rounds) != args.rounds:
        print(outcome.output[-4000:], file=sys.stderr)
        print(f"Flower run failed; logs in {workdir}", file=sys.stderr)
        return 1
    print(f"Flower, {args.supernodes} SuperNodes on 127.0.0.1 ({outcome.seconds:.1f} s for `flwr run`, "
          f"{len(left)} leftover processes):")
    for r in outcome.rounds:
        setup = [d.get("setup_seconds") or 0.0 for d in r["devices"].values()]
        train = [d["seconds"] for d in r["devices"].values()]
        print(f"  round {r['round']}: accuracy {r['global_accuracy']:.4f}, {r['seconds']:.2f} s "
              f"(per device: ClientApp start-up {min(setup):.1f}-{max(setup):.1f} s, "
              f"local training {min(train):.2f}-{max(train):.2f} s)")
    if not args.skip_in_process:
        for workers in (1, args.supernodes):
            print(f"In-process engine, {args.supernodes} devices, {workers} worker thread(s):")
            for r in in_process_rounds(run_config, args.supernodes, os.environ.get("FL_DATA_DIR"), workers):
                print(f"  round {r['round']}: accuracy {r['global_accuracy']:.4f}, {r['seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
