"""This process as a run's ServerApp: a ``Grid`` on a SuperLink that runs in process isolation.

A SuperLink started with ``--isolation process`` launches no ServerApp
itself: a submitted run waits as a pending ServerApp *task* until some
process acquires it from the SuperLink's Runtime API (``flwr-serverapp`` does
this when ``flower-superexec`` starts it; see Flower 1.42's
``flwr/superlink/runtime/run_serverapp.py``). :class:`ServerAppTask` does the
same steps from inside the dashboard or CLI process:

1. ``AcquireTask`` (signed with the SuperLink's ``--superexec-auth-secret-file``
   when it has one) returns the task and a token;
2. an ``HttpGrid`` with that token pulls the task input (run, context) and is
   bound to the run; a heartbeat keeps the task alive;
3. the engine's round loop (``engine.federation.Federation`` with a
   :class:`LinkTransport`) talks to the SuperNodes through that grid: the
   global weights, the run store and the predictor stay in this process;
4. ``PushTaskOutput`` ends the task with its status (:meth:`ServerAppTask.finish`).

The run itself is submitted with ``flwr run`` (:func:`submit_run`): it ships the
app's FAB, whose ClientApp the SuperNodes run, and the run config they read.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path

import httpx
from flwr.common.constant import SubStatus
from flwr.common.logger import log
from flwr.common.serde import context_from_proto, run_from_proto
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest,
    PullTaskInputRequest,
    PushTaskOutputRequest,
    SendTaskHeartbeatRequest,
)
from flwr.supercore.auth import load_superexec_auth_secret
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.grid import HttpGrid

from devices.messages import TrainInstructions, Weights
from devices.trainer import TrainingStopped
from engine.transport import Receive
from flower_app.device_state import ControlMirror
from flower_app.link_retry import LinkError, TaskRevoked, link_retry_invoker
from flower_app.polling import PollingGrid
from flower_app.transport import GridTransport

COMPONENT = "flwr-serverapp"
ACQUIRE_METHODS = frozenset({"/flwr.proto.Runtime/AcquireTask"})
ACQUIRE_POLL_SECONDS = 0.1
RUN_ID_PATTERN = re.compile(r"Successfully started run (\d+)")
FRAME = re.compile("[\u2500-\u257f]+")  # the box-drawing characters of the flwr CLI's panels
ACQUIRE_REFUSED = ("the SuperLink refused to hand over the run's ServerApp task (HTTP {status}): is the SuperExec "
                   "secret file the SuperLink's --superexec-auth-secret-file?")
APP_WARNING = re.compile(r"(Flower App configuration warnings|- Recommended property)")


@dataclass(frozen=True)
class SuperLinkAddress:
    """How to reach a SuperLink's Runtime and Control APIs (both answer this machine only)."""

    address: str  # host:port
    root_certificates: Path | None  # its CA certificate; None: plain HTTP (local tries only)
    superexec_secret: Path | None = None  # the SuperLink's --superexec-auth-secret-file

    @property
    def insecure(self) -> bool:
        return self.root_certificates is None

    def certificate_bytes(self) -> bytes | None:
        return None if self.root_certificates is None else Path(self.root_certificates).read_bytes()

    def cli_config(self, connection: str) -> str:
        """The ``config.toml`` of a ``FLWR_HOME`` whose ``connection`` is this SuperLink."""
        link = "insecure = true" if self.insecure else f'root-certificates = "{Path(self.root_certificates).resolve()}"'
        return f'[superlink]\ndefault = "{connection}"\n\n[superlink.{connection}]\naddress = "{self.address}"\n{link}\n'


def submit_run(command: Sequence[str], cwd: Path, env: dict[str, str], timeout: float = 120.0) -> int:
    """Run a ``flwr run`` ``command`` (without ``--stream``: it returns once submitted); the run's id."""
    try:
        done = subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        raise LinkError(f"flwr run did not submit the run within {timeout:g} s") from None
    output = done.stdout + done.stderr
    match = RUN_ID_PATTERN.search(output)
    if done.returncode != 0 or match is None:
        raise LinkError(f"flwr run could not submit the run (exit code {done.returncode}): {flwr_reason(output)}")
    return int(match.group(1))


def flwr_reason(output: str) -> str:
    """The ``flwr`` CLI's output as one line: its panels' frames and the app's packaging warnings left out."""
    lines = [line for line in output.splitlines()
             if not APP_WARNING.match(line.strip())]  # e.g. 'Recommended property "license" missing'
    return " ".join(FRAME.sub(" ", "\n".join(lines)).split())[-600:]


def runtime_client(link: SuperLinkAddress) -> RuntimeHttpClient:
    """A Runtime API client that may acquire tasks (signed with the SuperLink's SuperExec secret, if any)."""
    interceptors = [RuntimeVersionHttpInterceptor(component_name=COMPONENT)]
    if link.superexec_secret is not None:
        secret = load_superexec_auth_secret(str(link.superexec_secret))
        interceptors.append(SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=ACQUIRE_METHODS))
    return RuntimeHttpClient.from_server_address(
        server_address=link.address, insecure=link.insecure, root_certificates=link.certificate_bytes(),
        interceptors=interceptors, retry_invoker=link_retry_invoker(link.address, ACQUIRE_REFUSED),
    )


def acquire_token(link: SuperLinkAddress, run_id: int, timeout: float = 60.0) -> str:
    """Claim the pending ServerApp task of run ``run_id``; its token.

    A pending ServerApp task of another run, claimed on the way (Flower hands out
    the oldest first), is ended as failed with a reason: this SuperLink's
    ServerApps are played by the process that submitted them.
    """
    client = runtime_client(link)
    request = AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                response = client.AcquireTask(request)
            except httpx.HTTPError as error:
                raise LinkError(f"the SuperLink at {link.address} refused the ServerApp's link: {error}") from None
            if response.HasField("task") and response.token:
                if response.task.run_id == run_id:
                    return response.token
                _refuse(link, response.token, response.task.run_id)
                continue
            time.sleep(ACQUIRE_POLL_SECONDS)
    finally:
        client.close()
    raise LinkError(f"the SuperLink did not hand over the ServerApp task of run {run_id} within {timeout:g} s "
                    "(is it running with --isolation process?)")


def link_grid(link: SuperLinkAddress, token: str) -> HttpGrid:
    """An ``HttpGrid`` with ``token`` whose refused calls raise :class:`TaskRevoked` (Flower's would SIGINT us)."""
    grid = HttpGrid(link.address, link.insecure, link.certificate_bytes(), token=token)
    grid._retry_invoker = link_retry_invoker(link.address)  # noqa: SLF001 - before its first call connects it
    return grid


def _refuse(link: SuperLinkAddress, token: str, run_id: int) -> None:
    grid = link_grid(link, token)
    try:
        grid._runtime_client.PullTaskInput(PullTaskInputRequest())  # noqa: SLF001 - Flower's own ServerApp runtime does this
        grid._runtime_client.PushTaskOutput(PushTaskOutputRequest(  # noqa: SLF001
            sub_status=SubStatus.FAILED,
            details="this SuperLink's ServerApps run in the process that submitted them (fl-watch dashboard or CLI)"))
    except (httpx.HTTPError, LinkError) as error:
        log(WARNING, "could not end the unexpected ServerApp task of run %s: %s", run_id, error)
    finally:
        grid.close()
    log(WARNING, "ended the pending ServerApp task of run %s: it was not submitted by this process", run_id)


class ServerAppTask:
    """One run's ServerApp task held by this process: its grid, run config and heartbeat."""

    def __init__(self, link: SuperLinkAddress, token: str):
        self.link = link
        self.grid = link_grid(link, token)
        self.lost = threading.Event()  # the SuperLink no longer knows the task (e.g. the run was stopped there)
        self.run_id: int | None = None  # known once the task input is pulled
        client = self.grid._runtime_client  # noqa: SLF001 - as flwr/superlink/runtime/run_serverapp.py
        self._heartbeat = HeartbeatSender(self._heartbeat_fn(client))
        self._heartbeat.start()
        self._finished = False
        try:
            response = client.PullTaskInput(PullTaskInputRequest())
        except (httpx.HTTPError, LinkError) as error:
            self._heartbeat.stop()
            raise LinkError(f"the SuperLink did not give the ServerApp its run: {error}") from None
        self.run = run_from_proto(response.run)
        self.context = context_from_proto(response.context)
        # Flower's Message() stamps every message with these (process-wide, as in flwr-serverapp): so one
        # Flower run per process at a time
        TaskIdentity.task_id, TaskIdentity.run_id = response.task_id, self.run.run_id
        TaskIdentity.node_id = response.context.node_id
        self.grid.set_run(self.run)
        self.run_id = self.run.run_id

    def _heartbeat_fn(self, client: RuntimeHttpClient) -> Callable[[], bool]:
        """Flower's task heartbeat, except that a refused one marks the task lost (and beats no more) instead of
        raising SIGINT; the round loop's next call to the SuperLink raises :class:`TaskRevoked`."""
        request = SendTaskHeartbeatRequest()

        def beat() -> bool:
            if self.lost.is_set():
                return True
            try:
                response = client.SendTaskHeartbeat(request)
            except TaskRevoked as error:
                self.lost.set()
                log(WARNING, "run %s: %s", self.run_id, error)
                return True
            except (httpx.TransportError, LinkError):
                return False  # Flower's sender tries again later
            except httpx.HTTPStatusError:
                self.lost.set()
                return True
            if not response.success:
                self.lost.set()
            return True

        return beat

    def finish(self, status: str = SubStatus.COMPLETED, details: str = "") -> None:
        """End the task at the SuperLink (once): ``SubStatus.COMPLETED``, ``STOPPED`` or ``FAILED``."""
        if self._finished:
            return
        self._finished = True
        self.grid._retry_invoker.max_tries = 1  # noqa: SLF001 - do not hang on exit (as Flower's runtime)
        # The heartbeat ends (its thread joined) BEFORE the output is pushed: once the task is finished the
        # SuperLink answers its token with 401, which would only log a warning (flower_app.link_retry).
        if self._heartbeat.is_running:
            self._heartbeat.stop()
        if self.lost.is_set():  # the SuperLink ended the task itself: it would refuse the output
            self.grid.close()
            return
        try:
            self.grid._runtime_client.PushTaskOutput(  # noqa: SLF001
                PushTaskOutputRequest(sub_status=status, details=details[:500]))
        except TaskRevoked:
            log(INFO, "run %s: the SuperLink had ended its ServerApp task already", self.run_id)
        except (httpx.HTTPError, LinkError) as error:
            log(WARNING, "could not report the end of run %s to the SuperLink: %s", self.run_id, error)
        finally:
            self.grid.close()


class StoppableGrid(PollingGrid):
    """A :class:`PollingGrid` whose wait for replies calls ``checkpoint`` between pulls (pause, stop)."""

    def __init__(self, grid, interval: float):
        super().__init__(grid, interval)
        self.checkpoint: Callable[[int], None] = lambda _steps: None

    def pull_messages(self, message_ids):
        self.checkpoint(0)  # raises TrainingStopped when the run is stopped
        return self.grid.pull_messages(message_ids)


@dataclass(frozen=True)
class NodeView:
    """What the device view shows of the SuperNode holding a partition."""

    node_id: int
    declared_samples: int | None
    last_seen: float  # time.monotonic() when the SuperLink last listed it


class LinkTransport(GridTransport):
    """The Flower transport for ``engine.federation.Federation``: who is connected, and stoppable rounds.

    A watcher thread asks the SuperLink for its nodes every ``watch_seconds``
    (and each new node for its partition), so joining and leaving SuperNodes show
    in the device view before and between rounds, not only when a round starts.

    SCAFFOLD: each device's control variate c_i lives on its SuperNode; the server's
    copy of it (:class:`flower_app.device_state.ControlMirror`) goes to the run store
    and back to the devices of a resumed run.
    """

    training_note = "Each device is a Flower SuperNode: it trains in its own process, on its own machine."
    backend = "flower"  # the engine.backends name of the federation that uses it

    def __init__(self, task: ServerAppTask, settings, poll_seconds: float, watch_seconds: float = 1.0,
                 on_close: Callable[[], None] | None = None):
        super().__init__(StoppableGrid(task.grid, poll_seconds), settings)
        self.task = task
        self._roster_grid = PollingGrid(task.grid, poll_seconds)  # never paused or stopped by a round's control
        self._roster_lock = threading.Lock()
        self._last_seen: dict[int, float] = {}  # partition id -> monotonic time
        self._on_close = on_close
        self._closed = threading.Event()
        self._watcher = threading.Thread(target=self._watch, args=(watch_seconds,), name="flower-roster",
                                         daemon=True)
        self.controls = ControlMirror()  # SCAFFOLD: the server's copy of each device's c_i
        self._watcher.start()

    def refresh(self) -> dict[int, int]:
        """Ask the SuperLink who is connected now; partition id -> node id."""
        with self._roster_lock:
            nodes = self.roster.refresh(self._roster_grid)
            now = time.monotonic()
            self._last_seen.update({partition: now for partition in nodes})
            self.nodes = nodes
            return dict(nodes)

    def _watch(self, interval: float) -> None:
        while not self._closed.wait(interval) and not self.task.lost.is_set():
            try:
                self.refresh()
            except TaskRevoked as error:  # the round loop's next call says so to the user
                self.task.lost.set()
                log(WARNING, "run %s: %s", self.task.run_id, error)
            except Exception as error:  # noqa: BLE001 - a missed look: the next one, or the round, says more
                log(WARNING, "could not list the SuperLink's nodes: %s", error)

    # -- what the federation asks -------------------------------------------------------
    def reachable(self, device_ids: Sequence[int]) -> list[int]:
        """The devices among ``device_ids`` whose SuperNode is connected now."""
        nodes = self.refresh()
        return [d for d in device_ids if d in nodes]

    def node_view(self, device_id: int) -> NodeView | None:
        with self._roster_lock:
            node = self.nodes.get(device_id)
            if node is None:
                return None
            return NodeView(node, self.roster.declared.get(node), self._last_seen.get(device_id, 0.0))

    def collect(self, instructions: dict[int, TrainInstructions], checkpoint: Callable[[int], None],
                receive: Receive) -> int:
        sent = {partition: self.controls.outgoing(partition, instruction, self.nodes.get(partition))
                for partition, instruction in instructions.items()}

        def mirrored(partition: int, reply) -> None:
            self.controls.received(partition, reply, sent[partition], self.nodes.get(partition))
            receive(partition, reply)

        self.grid.checkpoint = checkpoint
        try:
            return super().collect(sent, checkpoint, mirrored)
        finally:
            self.grid.checkpoint = lambda _steps: None

    def device_states(self) -> dict[int, dict[str, Weights]]:
        """Each device's c_i as the server knows it (SCAFFOLD), for the run store."""
        return self.controls.states()

    def restore_device_states(self, states: dict[int, dict[str, Weights]]) -> None:
        """A resumed run's stored c_i: each device is sent its own in the first round that reaches it."""
        self.controls.restore(states)

    def close(self, status: str = "completed", details: str = "") -> None:
        """End the ServerApp task (``completed``, ``stopped`` or ``failed``) and whatever ``on_close`` ends."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._watcher.join(timeout=5)
        sub_status = {"completed": SubStatus.COMPLETED, "stopped": SubStatus.STOPPED}.get(status, SubStatus.FAILED)
        try:
            self.task.finish(sub_status, details)
        finally:
            if self._on_close is not None:
                self._on_close()


__all__ = ["LinkError", "LinkTransport", "ServerAppTask", "SuperLinkAddress", "TrainingStopped", "acquire_token",
           "submit_run"]
