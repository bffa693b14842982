"""The launchers that make Flower rounds fast: argument handling of the SuperNode and worker scripts."""

from __future__ import annotations

import importlib.util
import time

import pytest

from flower_app.loopback import PROJECT_ROOT, THREAD_VARIABLES, LocalDeployment, worker_threads
from flower_app.polling import poll_seconds


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_supernode_launcher_takes_its_option_and_passes_the_rest_to_flower():
    launcher = load_script("supernode")
    seconds, rest = launcher.split_argv(["--superlink", "h:1", "--fleet-poll-interval", "0.2", "--insecure"])
    assert seconds == 0.2 and rest == ["--superlink", "h:1", "--insecure"]
    assert launcher.split_argv(["--fleet-poll-interval=0.05"]) == (0.05, [])
    assert launcher.split_argv([]) == (launcher.DEFAULT_SECONDS, [])
    with pytest.raises(SystemExit, match="fleet-poll-interval"):
        launcher.split_argv(["--fleet-poll-interval", "5"])
    clock = launcher.PollClock(0.01)
    started = time.perf_counter()
    clock.sleep(3)  # Flower's 3 s idle wait: a short poll
    clock.sleep(0.5)  # Flower's wait for a reply, capped
    assert time.perf_counter() - started < 1 and clock.time is time.time and clock.monotonic is time.monotonic


def test_an_idle_supernode_polls_less_and_less_until_it_works_again():
    launcher = load_script("supernode")
    now, slept = [0.0], []

    def sleep(seconds):
        slept.append(round(seconds, 3))
        now[0] += seconds

    clock = launcher.PollClock(0.1, idle_cap=1.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(40):
        clock.sleep(3)  # no message, again and again
    assert slept[0] == 0.1 and slept[-1] == 1.0 and slept == sorted(slept)  # backs off up to the cap
    now[0] += 2.0  # it handled a message (pulled, ran, pushed) for 2 s
    clock.sleep(3)
    assert slept[-1] == 0.1  # fast again: the next round is coming
    clock.sleep(0.5)  # waiting for its ClientApp's reply: only its own memory is checked, so often
    assert slept[-1] == launcher.LOCAL_WAIT_SECONDS


def test_worker_options_are_checked():
    worker = load_script("clientapp_worker")
    args = worker.parse_args(["--runtime-api-address", "127.0.0.1:9094", "--insecure"])
    assert args.poll_interval == 0.05 and args.token is None
    with pytest.raises(SystemExit):
        worker.parse_args(["--runtime-api-address", "127.0.0.1:9094", "--poll-interval", "0"])


def test_server_poll_interval_comes_from_the_environment():
    assert poll_seconds({}) == 0.05 and poll_seconds({"FL_FLOWER_POLL_SECONDS": "0.5"}) == 0.5
    with pytest.raises(ValueError, match="FL_FLOWER_POLL_SECONDS"):
        poll_seconds({"FL_FLOWER_POLL_SECONDS": "soon"})


def test_polls_back_off_while_nothing_happens():
    from flower_app.polling import pull_wait

    worker = load_script("clientapp_worker")
    for wait in (pull_wait, worker.poll_wait):
        assert wait(0.05, 0.0) == 0.05  # right after a push, a reply or a task
        assert wait(0.05, 3.0) == pytest.approx(0.3)  # a tenth of the quiet time
        assert wait(0.05, 600.0) == 1.0  # capped
        assert wait(2.0, 600.0) == 2.0  # never faster than asked


def test_a_worker_that_acquires_a_task_before_its_message_is_stored_waits_for_the_message():
    from flwr.proto.runtime_pb2 import PullAppMessagesResponse  # pylint: disable=E0611
    from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611

    worker = load_script("clientapp_worker")

    class SuperNode:  # its Runtime API: the task's message is stored after the worker's first two asks
        def __init__(self, empty_answers):
            self.asked, self.empty_answers = 0, empty_answers

        def PullMessages(self, request):
            self.asked += 1
            if self.asked <= self.empty_answers:
                return PullAppMessagesResponse()
            return PullAppMessagesResponse(messages_list=[ProtoMessage()])

        def PullObject(self, request):
            return "passed through"

    now = [0.0]
    clock, sleep = (lambda: now[0]), (lambda seconds: now.__setitem__(0, now[0] + seconds))
    late = SuperNode(empty_answers=2)
    client = worker.WaitsForTheTasksMessage(late, interval=0.02, timeout=60, clock=clock, sleep=sleep)
    assert len(client.PullMessages(None).messages_list) == 1 and late.asked == 3
    assert now[0] == pytest.approx(0.04) and client.PullObject(None) == "passed through"
    never = SuperNode(empty_answers=10**6)  # gives up after the timeout: Flower's own error follows
    client = worker.WaitsForTheTasksMessage(never, interval=0.5, timeout=5, clock=clock, sleep=sleep)
    assert not client.PullMessages(None).messages_list and never.asked == 11


def test_a_grid_that_waits_long_says_which_nodes_have_not_replied(caplog, server_identity):
    from flwr.app import Message, RecordDict

    from flower_app.polling import WAITING_NOTE_SECONDS, PollingGrid
    from tests.flower_testing import StubGrid

    class Inner(StubGrid):  # node 21 replies at once, node 22 never
        def get_node_ids(self):
            return [21, 22]

        def send_and_receive(self, messages, *, timeout=None):
            raise AssertionError("PollingGrid pushes and pulls itself")

        def push_messages(self, messages):
            self.pushed = {f"m{m.metadata.dst_node_id}": m for m in messages}
            return list(self.pushed)

        def pull_messages(self, message_ids):
            replies = [Message(RecordDict(), reply_to=self.pushed[i]) for i in message_ids if i == "m21"]
            for reply in replies:
                reply.metadata.__dict__["_reply_to_message_id"] = "m21"
            return replies

    now = [0.0]
    grid = PollingGrid(Inner(), 0.05, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    messages = [grid.create_message(RecordDict(), "train", node, "1") for node in (21, 22)]
    with caplog.at_level("INFO", logger="flwr"):
        replies = grid.send_and_receive(messages, timeout=2.5 * WAITING_NOTE_SECONDS)
    assert len(replies) == 1 and now[0] >= 2.5 * WAITING_NOTE_SECONDS
    notes = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert len(notes) == 2 and all(note.endswith("node(s) 22") for note in notes), notes


def test_one_request_asks_for_parts_still_missing_for_all_of_flowers_pulling_threads(monkeypatch):
    """Flower's own ``pull_objects`` (8 threads) through the worker's gate: parts that land after 0.3 s cost
    about one request per interval in all, not one per thread, and every part arrives intact."""
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    worker = load_script("clientapp_worker")
    assert worker.PULL_BACKOFF["max_tries_per_object"] is None  # waits as long as the SuperLink takes
    landed, calls = time.monotonic() + 0.3, []

    def pull(object_id: str) -> bytes:
        calls.append(object_id)
        if time.monotonic() < landed:
            raise ObjectUnavailableError(object_id)
        return object_id.encode()

    ids = [f"part-{index}" for index in range(6)]
    monkeypatch.setattr(inflatable_utils, "get_num_workers", lambda most: most)  # 8 threads, as in the worker
    options = {**worker.PULL_BACKOFF, "max_concurrent_pulls": 8}
    got = inflatable_utils.pull_objects(ids, worker.OneAsksForMissingParts(pull, worker.PULL_SECONDS), **options)
    assert got == {object_id: object_id.encode() for object_id in ids}
    assert len(calls) <= 0.3 / worker.PULL_SECONDS + 2 * len(ids)  # ungated: 6 threads x 15 tries = 90+


def test_local_workers_share_the_machines_cores_unless_the_user_set_tensorflows_threads(tmp_path, monkeypatch):
    assert worker_threads(3, cores=2) == 1 and worker_threads(2, cores=8) == 4 and worker_threads(1, cores=2) == 2
    for variable in THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    deployment = LocalDeployment(tmp_path, 3, secure=False)
    env = deployment.worker_env("supernode-0-home")
    assert all(env[variable] == str(worker_threads(3)) for variable in THREAD_VARIABLES)
    assert not set(THREAD_VARIABLES) & set(deployment.env("superlink-home"))  # only the workers train
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "7")
    assert deployment.worker_env("supernode-0-home")["TF_NUM_INTRAOP_THREADS"] == "7"
