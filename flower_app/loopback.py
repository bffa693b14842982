"""A whole Flower deployment on one machine: a SuperLink, N SuperNodes and ``flwr run``, over 127.0.0.1.

Real processes with real network traffic, on free ports, for tests,
measurements and trying it out; see the README for a deployment across
machines. By default it is set up as a real deployment should be:

* **TLS** everywhere (a test CA and server certificate from
  ``scripts/make_certificates.sh``, made in ``workdir``);
* **SuperNode authentication**: the SuperLink runs with
  ``--enable-supernode-auth``, every SuperNode gets its own key pair, and its
  public key is registered (``flwr supernode register``) before it starts;
* **fast rounds**: each SuperNode runs in ``--isolation process`` next to one
  long-lived ClientApp worker (``scripts/clientapp_worker.py``) that keeps
  TensorFlow, its data, its model replica and the installed app loaded across
  messages; the SuperNode pulls every ``poll_seconds`` instead of 3 s right
  after it handled a message (``scripts/supernode.py``) and so do the worker
  and the ServerApp (``flower_app.polling``), all backing off while idle (up to
  1 s) so that polling costs the machine little; a message's parts move on 8
  threads instead of 2;
* files named by the run config are confined to ``output_dir``
  (``FL_FLOWER_OUTPUT_DIR`` of the ServerApp, see ``flower_app.output_dir``).

``secure=False`` (``--insecure``) drops TLS and authentication for a quick
local try; ``isolation="subprocess"`` is Flower's default (a new ClientApp
process per message), kept for comparison.

Every process gets its own ``FLWR_HOME`` under ``workdir`` (as if on its own
machine) and is started in a new session, so :meth:`LocalDeployment.stop` can
end each one with its whole process group. All of them, and everything they
start (SuperExec, ServerApp and ClientApp processes), carry a unique
environment tag: :meth:`LocalDeployment.leftovers` finds any that survive.
Each launcher in ``scripts/`` also ends itself and its process group when the
process that started it dies, even by SIGKILL (``scripts/parent_watch.py``):
a killed dashboard or CLI leaves no SuperLink behind.

``python -m flower_app.loopback --supernodes 2 --rounds 3`` runs one
deployment and prints its rounds next to the in-process engine's
(``flower_app.loopback_compare``). The certificates, keys and secrets come
from ``flower_app.certificates``; a folder made by ``flower_app.scratch`` is
removed when the deployment stops.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from flower_app.certificates import make_certificates, new_key_pair, register_keys, write_secret
from flower_app.config import run_config_arg, toml_value
from flower_app.output_dir import OUTPUT_DIR_VARIABLE
from flower_app.processes import (PARENT_VARIABLE, TAG_VARIABLE, ask_for_stacks, free_port,
                                  processes_tagged, terminate, terminate_all, wait_for_port)
from flower_app.polling import POLL_VARIABLE
from flower_app.scratch import ScratchFolder

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = PROJECT_ROOT / "scripts"
CONNECTION = "loopback"
ISOLATION_MODES = ("process", "subprocess")
STACK_DUMP_SECONDS = 3.0  # after asking a stalled deployment's processes for their stacks
SPARE_KEYS = 2  # secure deployments: registered keys for SuperNodes added mid-run
DEFAULT_POLL_SECONDS = 0.1  # SuperNodes, ClientApp workers and the ServerApp (Flower: 3 s, 1 s, 3 s)
SUPEREXEC_POLL_SECONDS = 0.5
@dataclass
class RunOutcome:
    run_id: int | None
    returncode: int
    seconds: float
    output: str
    rounds: list[dict] = field(default_factory=list)  # the results-file lines


# TensorFlow's thread pools (read when it starts): without them each worker starts one thread per core
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def worker_threads(workers: int, cores: int | None = None) -> int:
    """TensorFlow threads for each of ``workers`` ClientApp workers that train at the same time on this
    machine's ``cores``: its share, at least one. Each would otherwise take every core (3 workers on 2 cores:
    6 busy threads spinning against each other)."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, workers))


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
        secure: bool = True,
        isolation: str = "process",
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        output_dir: str | Path | None = None,
        scratch: ScratchFolder | None = None,
    ):
        if isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation must be one of {ISOLATION_MODES}; got {isolation!r}")
        self.workdir = Path(workdir).resolve()
        self.num_supernodes = num_supernodes
        data_dir = data_dir or os.environ.get("FL_DATA_DIR")
        self.data_dir = os.path.abspath(data_dir) if data_dir else None  # processes run in other folders
        self.node_configs = node_configs or [
            {"partition-id": i, "num-partitions": num_supernodes} for i in range(num_supernodes)
        ]
        self.project_root = project_root
        self.startup_timeout = startup_timeout
        self.secure = secure
        self.isolation = isolation
        self.poll_seconds = poll_seconds
        self.output_dir = Path(output_dir).resolve() if output_dir else self.workdir
        self.certificates = self.workdir / "certificates"
        self.scratch = scratch  # ``workdir`` is this scratch folder: removed once the processes have ended
        self.tag = uuid.uuid4().hex
        self.port = 0
        self.processes: dict[str, subprocess.Popen] = {}
        self.runtime_ports: dict[str, int] = {}  # SuperNode name -> the port of its Runtime API (127.0.0.1)
        self._logs: list = []
        self._registered = 0  # SuperNode keys registered at the SuperLink

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
                PARENT_VARIABLE: str(os.getpid()),  # the launchers end when this process dies (killed or not)
                OUTPUT_DIR_VARIABLE: str(self.output_dir),
                POLL_VARIABLE: repr(self.poll_seconds),  # the ServerApp's grid
                # SuperExecs starting ServerApps (Flower: 1 s): polled all the time, needed once per run
                "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": repr(max(self.poll_seconds, SUPEREXEC_POLL_SECONDS)),
            }
        )
        # The app's code reaches the processes inside the FAB that `flwr run` builds, not via PYTHONPATH.
        env.pop("PYTHONPATH", None)
        if self.data_dir:
            env["FL_DATA_DIR"] = self.data_dir
        return env

    def worker_env(self, home: str) -> dict[str, str]:
        """A ClientApp worker's environment: :meth:`env` with TensorFlow limited to the worker's share of this
        machine's cores (:func:`worker_threads`), unless the user set the limits."""
        env = self.env(home)
        threads = str(worker_threads(len(self.node_configs)))
        for variable in THREAD_VARIABLES:
            env.setdefault(variable, threads)
        return env

    def _start(self, name: str, command: list[str], home: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("wb")
        self._logs.append(log)
        process = subprocess.Popen(
            command, cwd=self.workdir, env=env or self.env(home), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def dump_stacks(self) -> list[int]:
        """Every thread's stack of each launcher and ServerApp of this deployment, into its log: where a run
        that does not finish waits. Returns the pids asked (the processes that catch ``SIGUSR1``)."""
        return ask_for_stacks(processes_tagged(self.tag))

    def log_tails(self, chars: int = 4000) -> str:
        """The end of every SuperNode's and ClientApp worker's log: where a stalled run stopped."""
        names = sorted(name for name in self.processes if name.startswith(("supernode", "clientapp")))
        return "\n".join(f"--- {name}.log (end) ---\n{self.log(name)[-chars:]}" for name in names)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> "LocalDeployment":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        if self.secure:  # keys for every node plus SPARE_KEYS, so that a node joining mid-run starts at once
            make_certificates(self.certificates, len(self.node_configs) + SPARE_KEYS, force=True)
        superlink = self._start("superlink", self.superlink_command(), "superlink-home")
        wait_for_port(self.port, self.startup_timeout, superlink)
        self._write_cli_config()
        if self.secure:
            self.register_supernodes(range(len(self.node_configs) + SPARE_KEYS))
            self._registered = len(self.node_configs) + SPARE_KEYS
        for index in range(len(self.node_configs)):
            self.start_supernode(index)
        return self

    def superlink_command(self) -> list[str]:
        # scripts/superlink.py: flower-superlink whose Control/Runtime APIs answer 127.0.0.1 only
        command = [sys.executable, str(SCRIPTS / "superlink.py"), "--host", "127.0.0.1", "--port", str(self.port),
                   "--disable-runtime-dependency-installation"]
        if not self.secure:
            return command + ["--insecure"]
        return command + [
            "--ssl-ca-certfile", str(self.certificates / "ca.crt"),
            "--ssl-certfile", str(self.certificates / "server.crt"),
            "--ssl-keyfile", str(self.certificates / "server.key"),
            "--enable-supernode-auth",
        ]

    def _write_cli_config(self) -> None:
        cli_home = self.workdir / "cli-home"
        cli_home.mkdir(parents=True, exist_ok=True)
        link = (f'root-certificates = "{self.certificates / "ca.crt"}"' if self.secure else "insecure = true")
        (cli_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\n{link}\n'
        )

    def register_supernodes(self, indices) -> None:
        """``flwr supernode register`` each node's public key, all in one CLI process (one start-up, not N)."""
        register_keys([self.certificates / f"supernode-{i}.pub" for i in indices], CONNECTION,
                      self.env("cli-home"), self.project_root, self.startup_timeout)

    def supernode_command(self, index: int, runtime_port: int, key: Path | None = None, authenticate: bool = True,
                          runtime_secret: Path | None = None) -> list[str]:
        """SuperNode ``index``; secure deployments: with private ``key`` (default its own) unless not ``authenticate``.

        ``runtime_secret``: the file its ClientApp worker signs task requests with (process isolation).
        """
        config = " ".join(f"{k}={toml_value(v)}" for k, v in self.node_configs[index].items())
        command = [sys.executable, str(SCRIPTS / "supernode.py"), "--fleet-poll-interval", repr(self.poll_seconds),
                   "--superlink", f"127.0.0.1:{self.port}", "--host", "127.0.0.1", "--port", str(runtime_port),
                   "--node-config", config, "--isolation", self.isolation]
        if runtime_secret is not None:
            command += ["--superexec-auth-secret-file", str(runtime_secret)]
        if not self.secure:
            return command + ["--insecure"]
        command += ["--root-certificates", str(self.certificates / "ca.crt")]
        if not authenticate:
            return command
        return command + ["--auth-supernode-private-key", str(key or self.certificates / f"supernode-{index}")]

    def start_supernode(self, index: int, key: Path | None = None, name: str | None = None,
                        authenticate: bool = True, worker: bool = True) -> subprocess.Popen:
        """Start SuperNode ``index`` and, in process isolation, its long-lived ClientApp worker.

        ``worker=False``: no worker (a SuperNode expected to be refused has no tasks to run).
        """
        name = name or f"supernode-{index}"
        runtime_port = free_port()
        self.runtime_ports[name] = runtime_port
        home = f"{name}-home"
        secret = self._runtime_secret(home) if self.isolation == "process" else None
        supernode = self._start(name, self.supernode_command(index, runtime_port, key, authenticate, secret), home)
        if secret is not None and worker:
            self._start(name.replace("supernode", "clientapp"), [
                sys.executable, str(SCRIPTS / "clientapp_worker.py"), "--insecure",
                "--runtime-api-address", f"127.0.0.1:{runtime_port}", "--poll-interval", repr(self.poll_seconds),
                "--superexec-auth-secret-file", str(secret),
            ], home, self.worker_env(home))
        return supernode

    def _runtime_secret(self, home: str) -> Path:
        """A random secret (owner-only file) shared by a SuperNode and its worker: only they acquire its tasks."""
        return write_secret(self.workdir / home / "superexec.secret")

    def add_supernode(self, node_config: Mapping[str, object]) -> str:
        """Start one more SuperNode while the deployment runs (a device joining mid-run); its process name.

        In a secure deployment it gets its own key pair, registered before it starts
        (one of the ``SPARE_KEYS`` registered at start-up while they last).
        """
        self.node_configs.append(dict(node_config))
        index = len(self.node_configs) - 1
        if self.secure and index >= self._registered:
            new_key_pair(self.certificates / f"supernode-{index}")
            self.register_supernodes([index])
            self._registered = index + 1
        self.start_supernode(index)
        return f"supernode-{index}"

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI from the project root against this deployment."""
        return subprocess.run(
            ["flwr", *args], cwd=self.project_root, env=self.env("cli-home"), capture_output=True,
            text=True, timeout=timeout, start_new_session=True,
        )

    def run(self, run_config: Mapping[str, object], timeout: float = 300.0,
            project_root: Path | None = None) -> RunOutcome:
        """``flwr run . loopback --stream`` and wait for the run to end; reads ``results-file`` if set.

        ``project_root``: the app to run (default the deployment's); one SuperLink and its SuperNodes serve
        runs of several apps, each SuperNode's worker installing each app it is sent.
        """
        started = time.perf_counter()
        command = ["flwr", "run", ".", CONNECTION, "--stream"]
        if run_config:
            command += ["--run-config", run_config_arg(run_config)]
        process = subprocess.Popen(
            command, cwd=project_root or self.project_root, env=self.env("cli-home"), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.processes[f"flwr-run-{len(self.processes)}"] = process
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.dump_stacks()
            time.sleep(STACK_DUMP_SECONDS)  # the ServerApp's stacks reach `flwr run` through the SuperLink
            terminate(process)
            output = process.communicate()[0]
            raise TimeoutError(f"flwr run did not finish within {timeout:g} s:\n{output[-4000:]}\n"
                               f"{self.log_tails()}") from None
        seconds = time.perf_counter() - started
        (self.workdir / "flwr-run.log").write_text(output)
        match = re.search(r"Successfully started run (\d+)", output)
        rounds = []
        results_file = self.output_file(str(run_config.get("results-file") or ""))
        if results_file is not None and results_file.exists():
            rounds = [json.loads(line) for line in results_file.read_text().splitlines() if line]
        return RunOutcome(int(match.group(1)) if match else None, process.returncode, seconds, output, rounds)

    def output_file(self, name: str) -> Path | None:
        """Where the ServerApp puts the file a run config names (relative names land in ``output_dir``)."""
        return (self.output_dir / name).resolve() if name.strip() else None

    def run_status(self, run_id: int) -> str:
        """The run's status as ``flwr ls`` reports it, e.g. ``finished:completed``."""
        listed = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            runs = json.loads(listed.stdout).get("runs", [])
        except json.JSONDecodeError:
            return f"unknown ({listed.stdout[-500:]} {listed.stderr[-500:]})"
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def stop(self, timeout: float = 15.0) -> list[int]:
        """End every process group, then return the pids of tagged processes still alive (killed).

        A deployment in a scratch folder of its own removes it then (its logs with it).
        """
        # SuperNodes first (they sign off at the SuperLink), then the SuperLink.
        terminate_all([p for name, p in self.processes.items() if name != "superlink"], timeout)
        terminate_all([p for name, p in self.processes.items() if name == "superlink"], timeout)
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
        if self.scratch is not None:
            self.scratch.remove()
        return left

    def __enter__(self) -> "LocalDeployment":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # python -m flower_app.loopback: the comparison with the in-process engine
    from flower_app.loopback_compare import main

    raise SystemExit(main())
