"""A long-lived ClientApp process for a SuperNode started with ``--isolation process``.

Flower 1.42 runs every message in a new ``flwr-clientapp`` process (started by
``flower-superexec``, which polls the SuperNode once a second): each round a
device pays a Python start-up, its app's imports (TensorFlow: seconds), loading
its data and building its model. This worker does the job of both, in one
process that stays up: it asks the SuperNode's Runtime API for the next
ClientApp task every ``--poll-interval`` seconds (default 0.05) right after a
task, less and less often while it stays idle (up to 1 s), and runs it here
exactly as ``flwr-clientapp`` does (install the FAB, load its ClientApp, call
it, push the reply and the task's status). Modules stay imported between
messages, so whatever the app caches (``flower_app.node.local_node``: the
device's data and model replica) is reused.

Isolation between apps is kept: a task of a *different* FAB (other code)
replaces this process (``os.execv``) with a fresh worker that runs that task
first, so no module of one app is ever reused for another.

It needs only Flower (no checkout of the app; every app arrives as a FAB) and
is meant to run next to its SuperNode, on the same machine::

    flower-supernode --isolation process --host 127.0.0.1 --port 9094 ...
    python scripts/clientapp_worker.py --runtime-api-address 127.0.0.1:9094 --insecure

(``--insecure`` is the local Runtime API of that SuperNode, which listens on
127.0.0.1 only; the SuperNode's link to the SuperLink keeps its TLS.) Give
both the same ``--superexec-auth-secret-file`` (random bytes, readable by their
user only) so that no other local user can take the node's tasks.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from logging import ERROR, INFO

from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore import log
from flwr.supercore.constant import TaskType
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.auth import load_superexec_auth_secret
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supernode.runtime import run_clientapp
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

COMPONENT = "flwr-clientapp"
ACQUIRE_METHODS = frozenset({"/flwr.proto.Runtime/AcquireTask"})  # what the SuperNode checks the secret on
# Flower waits 1 s (doubling to 10 s) before re-asking for a message part that has not reached the SuperNode
# yet; the SuperNode is on this machine, so ask again sooner. Tries are not counted (Flower: 500, that is
# 10 s at this pace, less than a loaded SuperLink can take to deliver a model): Flower's 2 h limit stays, and
# a message whose parts the SuperNode fails to get is dropped there (its parts: not found), ending the pull.
PULL_SECONDS = 0.02
PULL_BACKOFF = {"initial_backoff": PULL_SECONDS, "backoff_cap": PULL_SECONDS, "max_tries_per_object": None}
IDLE_CAP_SECONDS = 1.0  # longest wait between task polls of an idle worker
BACKOFF_SHARE = 0.1  # idle for t seconds: poll every 0.1 t
TRANSFER_THREADS = 8  # as flower_app/polling.py
STARTUP_TIMEOUT = 120.0  # seconds to wait for the SuperNode's Runtime API at start-up
MESSAGE_WAIT_SECONDS = 30.0  # longest wait for an acquired task's message to reach the SuperNode's state


class OneAsksForMissingParts:
    """A message's ``pull_object_fn`` shared by Flower's pulling threads: while parts are missing, one
    request per ``interval`` in all, not one per thread.

    A worker gets its task as soon as the SuperNode has the message's header, while the SuperNode is still
    fetching the parts from the SuperLink, and they all land at once. Flower's threads each asked again
    every ``interval`` (measured: about 50 "not yet" answers per message, on a SuperNode busy fetching it);
    now a thread that is due while another one asked less than ``interval`` ago is told "not yet" without a
    request.
    """

    def __init__(self, pull: Callable[[str], bytes], interval: float, clock: Callable[[], float] = time.monotonic):
        self._pull, self._interval, self._clock = pull, interval, clock
        self._lock = threading.Lock()
        self._missing_at: float | None = None  # when a part was last asked for and missing (None: none missing)

    def __call__(self, object_id: str) -> bytes:
        with self._lock:
            now = self._clock()
            if self._missing_at is not None:
                if now - self._missing_at < self._interval:
                    raise ObjectUnavailableError(object_id)  # asked a moment ago: still missing
                self._missing_at = now  # this thread asks; the others wait for its answer's interval
        try:
            content = self._pull(object_id)
        except ObjectUnavailableError:
            with self._lock:
                self._missing_at = self._clock()
            raise
        with self._lock:
            self._missing_at = None  # the parts have arrived: every thread pulls its own at once
        return content


class WaitsForTheTasksMessage:
    """A Runtime API client whose ``PullMessages`` asks again, every ``interval`` s for up to ``timeout`` s, while
    the SuperNode has no message for the task yet; every other call goes to ``client`` unchanged.

    Flower 1.42's SuperNode creates a message's task *before* it stores the message
    (``flwr/supernode/start_client_internal.py``, ``_pull_and_store_message``). A worker that acquires the task
    in between (this one polls every 50 ms while rounds follow each other, and a loaded machine widens the gap)
    gets no message, ``pull_task_input`` raises, no reply is ever made, and the SuperNode, which waits for the
    reply of each message it took before it takes the next one, hangs for the rest of the run. The message is
    a moment away: wait for it.
    """

    def __init__(self, client, interval: float = PULL_SECONDS, timeout: float = MESSAGE_WAIT_SECONDS,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self._client, self._interval, self._timeout, self._clock, self._sleep = client, interval, timeout, clock, sleep

    def PullMessages(self, request):  # pylint: disable=invalid-name  # Flower's RPC name
        deadline = self._clock() + self._timeout
        while not (response := self._client.PullMessages(request)).messages_list and self._clock() < deadline:
            self._sleep(self._interval)
        return response

    def __getattr__(self, name: str):
        return getattr(self._client, name)


ORIGINAL_PULL = run_clientapp.pull_and_inflate_object_from_tree


def pull_message_parts(object_tree, pull_object_fn, confirm_object_received_fn, **options):
    """Flower's ``pull_and_inflate_object_from_tree`` with :data:`PULL_BACKOFF` and one asker for missing parts."""
    return ORIGINAL_PULL(object_tree, OneAsksForMissingParts(pull_object_fn, PULL_SECONDS),
                         confirm_object_received_fn, **{**options, **PULL_BACKOFF})


def fast_object_pulls() -> None:
    """Make ``pull_task_input`` retry missing message parts every 20 ms (one request for all threads) instead
    of after 1 s, doubling, and move a message's parts over more threads."""
    run_clientapp.pull_and_inflate_object_from_tree = pull_message_parts
    # A message's parts (one request each) over TRANSFER_THREADS threads, not min(2, CPU cores).
    inflatable_utils.get_num_workers = lambda max_concurrent: max(max_concurrent, TRANSFER_THREADS)


def runtime_client(args: argparse.Namespace, token: str | None = None) -> RuntimeHttpClient:
    """The SuperNode's Runtime API: for one task (``token``), else for acquiring tasks (signed with the secret)."""
    interceptors = [RuntimeVersionHttpInterceptor(component_name=COMPONENT)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    elif args.superexec_auth_secret_file:
        secret = load_superexec_auth_secret(args.superexec_auth_secret_file)
        interceptors.append(SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=ACQUIRE_METHODS))
    return RuntimeHttpClient.from_server_address(
        server_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates=validate_and_resolve_root_certificates(args.root_certificates, args.insecure),
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


def loaded_client_app(run, fab, apps: dict[str, ClientApp]) -> ClientApp:
    """The FAB's ClientApp: installed and imported on its first task, then the same object (``apps``)."""
    if hashlib.sha256(fab.content).hexdigest() != fab.hash_str:
        raise LoadClientAppError(f"the FAB received does not match its hash {fab.hash_str}")
    digest = fab.hash_str
    if digest not in apps:
        install_from_fab(fab.content, skip_prompt=True)
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        apps[digest] = load(run.fab_id, run.fab_version, fab.hash_str)
    return apps[digest]


def run_task(args: argparse.Namespace, token: str, apps: dict[str, ClientApp]) -> None:
    """One ClientApp task, as ``flwr.supernode.runtime.run_clientapp`` runs it, without exiting.

    ``apps``: the ClientApps this process has loaded, by FAB hash (an app is installed once, not per task).
    """
    client = runtime_client(args, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    message = reply = context = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    marks = [("start", time.perf_counter())]
    started_at = time.time()
    try:
        heartbeat.start()
        message, context, run, fab = pull_task_input(WaitsForTheTasksMessage(client))
        marks.append(("pull", time.perf_counter()))
        client_app = loaded_client_app(run, fab, apps)
        marks.append(("load", time.perf_counter()))
        reply = client_app(message=message, context=context)
        marks.append(("app", time.perf_counter()))
        status, details = SubStatus.COMPLETED, ""
    except Exception as error:  # pylint: disable=broad-exception-caught  # the app's failure: reported, not fatal
        log(ERROR, "ClientApp raised an exception", exc_info=error)
        code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(error, LoadClientAppError) \
            else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        details = f"{type(error)}:<'{error}'>"
        if message is not None:
            reply = Message(Error(code=code, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception as error:  # pylint: disable=broad-exception-caught
            log(ERROR, "Failed to push the reply", exc_info=error)
        marks.append(("push", time.perf_counter()))
        push_task_output(client=client, context=context, sub_status=status, details=details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()
        marks.append(("close", time.perf_counter()))
        log(INFO, "task %s in %.3f s (%s) from %.3f", status, marks[-1][1] - marks[0][1],
            ", ".join(f"{name} {end - begin:.3f}" for (_, begin), (name, end) in zip(marks, marks[1:])),
            started_at)


def restart_for(token: str, fab_hash: str) -> None:
    """Replace this process by a fresh worker that runs ``token``'s task first (another app's code)."""
    argv = list(sys.argv[1:])
    for handover in ("--token", "--fab-hash"):
        while handover in argv:
            index = argv.index(handover)
            del argv[index:index + 2]
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *argv,
                              "--token", token, "--fab-hash", fab_hash])


def wait_for_runtime_api(address: str, interval: float, timeout: float = STARTUP_TIMEOUT) -> None:
    """Wait until the SuperNode's Runtime API accepts connections, asking every ``interval`` seconds.

    Worker and SuperNode start together, and the SuperNode takes seconds to listen; Flower's client would
    retry with exponential backoff (waits of 4 s, then 12 s...), so the first task could wait that long.
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                return  # Flower's client reports it from here on
            time.sleep(interval)


def serve(args: argparse.Namespace) -> None:
    fast_object_pulls()
    wait_for_runtime_api(args.runtime_api_address, args.poll_interval)
    loaded_fab: str | None = None
    apps: dict[str, ClientApp] = {}
    if args.token:
        run_task(args, args.token, apps)  # handed over by the worker this process replaced
        loaded_fab = args.fab_hash
    client = runtime_client(args)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    idle_since = time.monotonic()
    while True:
        response = client.AcquireTask(request)
        if response.HasField("task") and response.token:
            fab_hash = response.task.fab_hash
            if loaded_fab is not None and fab_hash != loaded_fab:
                log(INFO, "Task of another app (FAB %s): starting a fresh worker", fab_hash)
                client.close()
                restart_for(response.token, fab_hash)
            run_task(args, response.token, apps)
            loaded_fab = fab_hash
            idle_since = time.monotonic()
            continue  # maybe more work already waiting
        time.sleep(poll_wait(args.poll_interval, time.monotonic() - idle_since))


def poll_wait(fast: float, idle: float) -> float:
    """Seconds until the next task poll: ``fast`` right after a task (the next round follows soon), then a
    ``BACKOFF_SHARE`` of the time idle, up to ``IDLE_CAP_SECONDS`` (as ``scripts/supernode.py`` polls)."""
    return min(max(fast, IDLE_CAP_SECONDS), max(fast, BACKOFF_SHARE * idle))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A long-lived ClientApp worker for a SuperNode in process isolation.")
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's --host:--port, e.g. 127.0.0.1:9094")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to the SuperNode's local Runtime API")
    parser.add_argument("--root-certificates", default=None, help="CA certificate of the Runtime API (with TLS)")
    parser.add_argument("--superexec-auth-secret-file", default=None,
                        help="the secret file given to the SuperNode's --superexec-auth-secret-file: without it, any "
                             "local user who reaches the Runtime API port could take this node's tasks")
    parser.add_argument("--poll-interval", type=float, default=0.05, help="seconds between task polls (default 0.05)")
    parser.add_argument("--token", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fab-hash", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0.001 <= args.poll_interval <= 60:
        parser.error(f"--poll-interval must be between 0.001 and 60 seconds; got {args.poll_interval}")
    return args


if __name__ == "__main__":
    from parent_watch import watch_parent  # scripts/: this script's own folder is on sys.path
    from stack_dump import dump_stacks_on_signal

    watch_parent()  # end with the dashboard or CLI that started its SuperNode, even if it is killed outright
    dump_stacks_on_signal()  # kill -USR1: where a stuck process waits, into its log
    arguments = parse_args()
    try:
        serve(arguments)
    except KeyboardInterrupt:
        pass
    except Exception as lost:  # pylint: disable=broad-exception-caught  # e.g. the SuperNode is gone
        sys.exit(f"clientapp_worker: lost the SuperNode's Runtime API at {arguments.runtime_api_address}: {lost}")
