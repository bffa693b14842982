"""The Flower app: message conversions, the Grid transport, and a real deployment on 127.0.0.1.

The last tests use the session's shared loopback deployment (``flower_deployment``
in ``tests/conftest.py``: ``flower-superlink`` with TLS and SuperNode
authentication, three ``flower-supernode`` processes each with its long-lived
ClientApp worker, free ports, telemetry off), ``flwr run`` two rounds on a small
slice of Fashion-MNIST with partition 2 deactivated, compare the rounds with the
in-process engine on the same configuration, and try the deployment as an
attacker would (SuperNodes that are not registered, a client without the
worker's secret). Stopping it without leaving a process behind is checked when
the session ends (the fixture's teardown).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType
from flwr.serverapp import Grid

from devices.codec import encode_delta
from devices.messages import DeviceMetrics, EncodedUpdate, PrivacySettings, TrainInstructions
from engine.aggregation import weighted_average
from engine.rounds import RoundRunner, device_seed, select_devices
from engine.strategies import build_strategy
from engine.transport_checks import reply_problem
from flower_app import records
from flower_app.config import (
    RUN_DEFAULTS,
    federation_config,
    node_spec,
    parse_faults,
    parse_ids,
    parse_params,
    server_settings,
)
from flower_app.transport import GridTransport, NotEnoughDevices, Roster
from tests.flower_testing import StubGrid

SHAPES = [(3, 2), (2,)]


def weights(value: float) -> list[np.ndarray]:
    return [np.full(shape, value, np.float32) for shape in SHAPES]


def metrics(**changes) -> DeviceMetrics:
    values = dict(train_loss=0.5, train_accuracy=0.8, received_loss=1.0, received_accuracy=0.6,
                  local_loss=0.6, local_accuracy=0.75, steps=12, seconds=0.3)
    values.update(changes)
    return DeviceMetrics(**values)


# -- conversions ---------------------------------------------------------------------------
def encoded(device_id: int, delta_value: float, samples: int, **metric_changes) -> EncodedUpdate:
    payload, _ = encode_delta([np.full(shape, delta_value, np.float32) for shape in SHAPES], "none")
    return EncodedUpdate(device_id, samples, metrics(**metric_changes), payload=payload)


def test_instructions_and_updates_survive_the_flower_records():
    instructions = TrainInstructions(3, weights(0.5), local_epochs=2, batch_size=16, learning_rate=0.01, seed=9,
                                     proximal_mu=0.1, privacy=PrivacySettings(1.5, 0.3), compression="q8",
                                     keep_optimizer_state=True)
    back = records.instructions_from(records.instructions_content(instructions))
    assert (back.server_round, back.local_epochs, back.batch_size, back.seed) == (3, 2, 16, 9)
    assert back.keep_optimizer_state
    assert back.learning_rate == pytest.approx(0.01) and back.proximal_mu == pytest.approx(0.1)
    assert back.privacy == PrivacySettings(1.5, pytest.approx(0.3)) and back.compression == "q8"
    assert all(np.array_equal(a, b) for a, b in zip(back.weights, instructions.weights))

    update = encoded(4, 1.5, 120, local_loss=float("nan"))
    content = records.update_content(update, {"setup_seconds": 2.5})
    assert content.config_records["update"]["num-examples"] == 120  # what Flower strategies weigh by
    back, extras = records.update_from(content, device_id=7)  # the server's view of who sent it wins
    assert (back.device_id, back.num_samples, back.metrics.steps, back.payload) == (7, 120, 12, update.payload)
    assert math.isnan(back.metrics.local_loss) and back.metrics.local_accuracy == pytest.approx(0.75)
    assert extras == {"setup_seconds": 2.5}
    reply_metrics = content.config_records["update"]
    for name in ("personalized-loss", "personalized-accuracy"):  # a run without personalisation may leave them out
        del reply_metrics[name]
    back, _ = records.update_from(content, device_id=7)
    assert math.isnan(back.metrics.personalized_accuracy) and back.metrics.train_loss == update.metrics.train_loss
    del reply_metrics["train-loss"]  # every other metric is required
    assert "no 'train-loss' metric" in records.update_from(content, 7)
    reply_metrics["train-loss"] = 0.5
    reply_metrics["num-examples"] = "120"  # a config record carries strings too: kept, for the loop to refuse
    back, _ = records.update_from(content, 7)
    assert back.num_samples == "120" and "must be an integer" in reply_problem(back, None)
    reply_metrics["payload"] = "not bytes"
    assert "'payload' must be bytes, got str" in records.update_from(content, 7)
    content.config_records["update"] = ConfigRecord({"payload": b"x"})
    assert "has no metrics" in records.update_from(content, 7)
    del content.config_records["update"]
    assert "no 'update' config record" in records.update_from(content, 7)
    assert "no 'node'" in records.node_from(records.RecordDict())
    bad_partition = records.node_content(1, 3, "partition", 50)
    bad_partition.config_records["node"]["partition-id"] = "abc"
    assert "partition-id must be" in records.node_from(bad_partition)
    assert records.finite_or_none(float("inf")) is None and records.finite_or_none("x") is None


def test_run_config_maps_onto_the_engine_config(tmp_path, monkeypatch):
    monkeypatch.setenv("FL_FLOWER_OUTPUT_DIR", str(tmp_path))  # run-config files must lie inside it
    config = federation_config({**RUN_DEFAULTS, "model": "mlp", "train-samples": 500, "faults": "1=nan",
                                "strategy": "fedprox", "strategy-params": "proximal_mu=0.2"}, num_devices=3)
    assert (config.model, config.num_devices, config.train_samples, config.test_samples) == ("mlp", 3, 500, None)
    assert config.faults == {1: "nan"} and config.strategy_params == {"proximal_mu": 0.2}
    assert parse_ids("[1, 3]") == parse_ids("1,3") == parse_ids("1\n3") == {1, 3}
    assert parse_faults("2=nan, 3=crash") == {2: "nan", 3: "crash"}
    assert parse_params("") == {}
    with pytest.raises(ValueError):
        parse_faults("nan")

    deactivated = tmp_path / "off.txt"
    settings = server_settings({"deactivated": "4", "deactivated-file": str(deactivated)})
    assert settings.deactivated_now() == {4}  # no file yet
    deactivated.write_text("1 2")
    assert settings.deactivated_now() == {1, 2, 4}  # re-read every round


def test_run_defaults_match_the_pyproject_run_config():
    import tomllib

    from flower_app.loopback import PROJECT_ROOT

    with (PROJECT_ROOT / "pyproject.toml").open("rb") as handle:
        app = tomllib.load(handle)["tool"]["flwr"]["app"]
    assert app["config"] == RUN_DEFAULTS
    assert app["components"] == {"serverapp": "flower_app.server_app:app", "clientapp": "flower_app.client_app:app"}


def test_app_dependencies_are_pinned_like_requirements_txt():
    import tomllib

    from flower_app.loopback import PROJECT_ROOT

    with (PROJECT_ROOT / "pyproject.toml").open("rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    requirements = (PROJECT_ROOT / "requirements.txt").read_text().split()
    assert "flwr==1.42.0" in dependencies
    assert [d for d in dependencies if d not in requirements] == []


def test_node_config_names_a_partition_or_an_image_folder():
    spec = node_spec({"partition-id": 1, "num-partitions": 3}, {"model": "mlp"}, node_id=77)
    assert (spec.partition_id, spec.num_partitions, spec.source) == (1, 3, "partition")
    assert hash(spec) == hash(node_spec({"partition-id": 1, "num-partitions": 3}, {"model": "mlp"}, 78))
    assert node_spec({"image-folder": "/data/mine"}, {}, node_id=77).partition_id == 77
    with pytest.raises(ValueError, match="partition-id"):
        node_spec({}, {}, node_id=1)
    with pytest.raises(ValueError, match="must be in"):
        node_spec({"partition-id": 3, "num-partitions": 3}, {}, node_id=1)


# -- the Grid transport against a fake grid ------------------------------------------------
class FakeGrid(StubGrid):
    """Connected nodes answer queries with their partition id; train messages get ``answers``."""

    def __init__(self, partitions: dict[int, int]):
        self.partitions = partitions  # node id -> partition id (negative: a broken node config)
        self.queries = 0
        self.answers = {}  # node id -> function(message) -> reply, for train messages

    def get_node_ids(self):
        return list(self.partitions)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            if message.metadata.message_type == MessageType.TRAIN:
                if node in self.answers:
                    replies.append(self.answers[node](message))
                continue
            self.queries += 1
            partition = self.partitions[node]
            if partition < 0:
                replies.append(Message(Error(code=1, reason="bad node config"), reply_to=message))
            else:
                replies.append(Message(records.node_content(partition, 4, "partition", 300), reply_to=message))
        return replies


def make_transport(grid, **run_config) -> GridTransport:
    settings = server_settings({"seed": 3, "min-devices": 2, "wait-timeout": 5.0, **run_config})
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    return GridTransport(grid, settings, Roster(), clock=lambda: now[0], sleep=sleep)


def stub_test_set():
    from engine.setup import ServerTestSet

    return ServerTestSet(np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.int64), 2)


class Evaluator:
    """Stands in for the server's test set: the loop's evaluate needs set_weights and evaluate."""

    def set_weights(self, weights): ...

    def evaluate(self, x, y):
        return 0.5, 0.8, np.zeros(len(y), np.int64)


def reply_with(update: EncodedUpdate):
    return lambda message: Message(records.update_content(update), reply_to=message)


def test_transport_selects_like_the_engine_and_skips_deactivated_partitions(tmp_path, server_identity, monkeypatch):
    monkeypatch.setenv("FL_FLOWER_OUTPUT_DIR", str(tmp_path))  # run-config files must lie inside it
    off = tmp_path / "off.txt"
    off.write_text("2")
    grid = FakeGrid({101: 0, 102: 1, 103: 2, 104: 3, 105: 1})  # nodes 102 and 105 share partition 1
    transport = make_transport(grid, **{"deactivated-file": str(off), "fraction": 0.5})
    active, deactivated = transport.active_partitions(2)
    assert active == [0, 1, 3] and deactivated == {2}
    assert transport.nodes == {0: 101, 1: 102, 2: 103, 3: 104}  # the lowest node id holds a shared partition
    assert transport.declared_samples(3) == 300
    assert grid.queries == 5
    transport.active_partitions(2)
    assert grid.queries == 5  # each node is asked once
    expected = select_devices([0, 1, 3], 0.5, 2, np.random.default_rng([3, 1]))
    seen = []
    grid.answers = {node: (lambda m: seen.append(m) or Message(Error(code=1, reason="x"), reply_to=m))
                    for node in (101, 102, 104)}
    config = transport.settings.federation
    runner = RoundRunner(config, transport, Evaluator(), build_strategy("fedavg"), stub_test_set(),
                         lambda *args: None)
    runner.run(1, weights(0.0), active, lambda steps: None)
    assert [m.metadata.dst_node_id for m in seen] == [transport.nodes[p] for p in expected]
    for partition, message in zip(expected, seen):
        assert records.instructions_from(message.content).seed == device_seed(3, 1, partition)


def test_transport_replies_are_checked_aggregated_and_reported_like_the_engine(tmp_path, server_identity):
    grid = FakeGrid({11: 0, 12: 1, 13: 2, 14: -1, 15: 3})  # node 14's node config is broken
    transport = make_transport(grid)
    active, _ = transport.active_partitions(2)
    assert active == [0, 1, 2, 3] and "bad node config" in transport.roster.refused[14]
    good, other = encoded(0, 1.0, 100), encoded(1, 3.0, 300)
    grid.answers = {11: reply_with(good), 12: reply_with(other),
                    13: reply_with(encoded(2, np.nan, 50)),  # poisoned
                    15: reply_with(encoded(3, 1.0, 10**6))}  # claims more samples than it declared
    config = transport.settings.federation
    runner = RoundRunner(config, transport, Evaluator(), build_strategy("fedavg"), stub_test_set(), lambda *a: None)
    new_weights, result = runner.run(1, weights(0.0), active, lambda steps: None)
    expected = weighted_average([weights(1.0), weights(3.0)], [100, 300])
    assert all(np.allclose(a, b) for a, b in zip(new_weights, expected))
    assert [d.device_id for d in result.devices] == [0, 1] and result.devices[1].samples == 300
    assert [(p.device_id, p.kind) for p in result.problems] == [(2, "rejected"), (3, "rejected")]
    assert "NaN" in result.problems[0].reason and "num-examples" in result.problems[1].reason
    record = json.loads(json.dumps(records.round_record(result, transport.nodes, frozenset(), 42, {},
                                                        transport.roster.refused), allow_nan=False))
    assert record["devices"]["1"]["node_id"] == 12 and record["refused_nodes"] == {"14": "its query failed: bad "
                                                                                           "node config"}

    grid.answers = {11: lambda m: Message(Error(code=1, reason="ClientApp raised"), reply_to=m),
                    12: reply_with(other)}  # partitions 2 and 3: no reply
    _, result = runner.run(2, new_weights, active, lambda steps: None)
    assert [(p.device_id, p.kind) for p in result.problems] == [(0, "failed"), (2, "failed"), (3, "failed")]
    assert "no reply" in result.problems[1].reason and result.devices[0].device_id == 1


def test_transport_waits_for_enough_active_devices_then_gives_up(tmp_path, server_identity):
    transport = make_transport(FakeGrid({11: 0, 12: 1}), deactivated="1")
    with pytest.raises(NotEnoughDevices, match="only 1 active"):
        transport.active_partitions(2)


# -- the device side -----------------------------------------------------------------------------
def test_a_node_holds_exactly_the_engine_device_for_its_partition(fashion, data_dir):
    from engine.setup import build_devices
    from flower_app.node import local_node

    run = {"model": "mlp", "train-samples": 600}
    spec = node_spec({"partition-id": 1, "num-partitions": 3, "data-dir": data_dir}, run, node_id=5)
    node = local_node(spec)
    assert local_node(spec) is node  # built once per process
    engine_device = build_devices(fashion, federation_config(run, num_devices=3))[1]
    assert node.device.device_id == 1
    assert np.array_equal(node.device.data.y_train, engine_device.data.y_train)
    assert np.array_equal(node.device.data.x_test, engine_device.data.x_test)
    update = node.fit(TrainInstructions(1, node.replica.get_weights(), seed=3))
    assert update.num_samples == len(engine_device.data.y_train) and update.metrics.steps > 0


def test_a_node_can_train_on_its_own_image_folder(fashion, tmp_path):
    from PIL import Image

    from data.datasets import CLASS_NAMES
    from flower_app.image_folder import load_image_folder

    for index in range(12):
        label = int(fashion.y_test[index])
        folder = tmp_path / ("Ankle boot" if label == 9 else str(label))
        folder.mkdir(exist_ok=True)
        Image.fromarray(255 - fashion.x_test[index]).resize((56, 56)).save(folder / f"{index}.png")
    (tmp_path / "0").mkdir(exist_ok=True)
    (tmp_path / "0" / "notes.txt").write_text("not an image")
    x, y = load_image_folder(tmp_path, CLASS_NAMES["fashion-mnist"])
    assert x.shape == (12, 28, 28) and x.dtype == np.uint8
    assert sorted(y.tolist()) == sorted(int(v) for v in fashion.y_test[:12])

    from flower_app.node import local_node

    node = local_node(node_spec({"image-folder": str(tmp_path)}, {"model": "mlp", "faults": "0=nan"}, node_id=9))
    assert node.device.device_id == 9 and node.device.fault == "none"  # faults name other partitions
    assert node.device.data.num_train + len(node.device.data.y_test) == 12
    update = node.fit(TrainInstructions(1, node.replica.get_weights(), batch_size=4))
    assert update.num_samples == node.device.data.num_train and update.metrics.steps > 0
    (tmp_path / "socks").mkdir()
    with pytest.raises(ValueError, match="names no class"):
        load_image_folder(tmp_path, CLASS_NAMES["fashion-mnist"])


# -- real processes on 127.0.0.1 ------------------------------------------------------------------
NUM_SUPERNODES = 3
DEACTIVATED = 2
RUN_CONFIG = {
    "num-server-rounds": 2,
    "model": "mlp",
    "train-samples": 1500,
    "test-samples": 1000,
    "min-devices": 2,
}


@pytest.fixture(scope="module")
def loopback(flower_deployment):
    """The session's SuperLink (TLS, node authentication) and three SuperNodes with their workers."""
    assert flower_deployment.num_supernodes == NUM_SUPERNODES
    return flower_deployment


@pytest.fixture(scope="module")
def deployment(loopback, data_dir):
    """The app run for two rounds on the loopback deployment, partition 2 deactivated."""
    workdir = loopback.output_dir
    (workdir / "flower-deactivated.txt").write_text(str(DEACTIVATED))
    run_config = {**RUN_CONFIG, "results-file": str(workdir / "flower-rounds.jsonl"),
                  "deactivated-file": str(workdir / "flower-deactivated.txt"), "data-dir": data_dir}
    outcome = loopback.run(run_config, timeout=600)
    status = loopback.run_status(outcome.run_id) if outcome.run_id else "not started"
    logs = {name: loopback.log(name)[-3000:] for name in ("superlink", "supernode-0", "clientapp-0")}
    return {"outcome": outcome, "status": status, "logs": logs}


@pytest.mark.timeout(900)  # includes starting the deployment; generous for a loaded machine
def test_flower_deployment_trains_over_loopback(deployment):
    outcome = deployment["outcome"]
    context = f"{outcome.output[-3000:]}\n{deployment['logs']}"
    assert outcome.returncode == 0 and outcome.run_id is not None, context
    assert deployment["status"] == "finished:completed", context
    assert [r["round"] for r in outcome.rounds] == [1, 2], context
    assert all(r["run_id"] == outcome.run_id for r in outcome.rounds)
    last = outcome.rounds[-1]
    assert last["global_accuracy"] > 0.3, outcome.rounds  # chance is 0.1
    assert sum(map(sum, last["confusion"])) == RUN_CONFIG["test-samples"]


def test_per_device_metrics_arrive_and_deactivated_partitions_sit_out(deployment):
    for record in deployment["outcome"].rounds:
        assert record["selected"] == [0, 1] and record["deactivated"] == [DEACTIVATED]
        assert sorted(record["devices"]) == ["0", "1"] and record["problems"] == []
        assert len({d["node_id"] for d in record["devices"].values()}) == 2
        for device in record["devices"].values():
            assert device["samples"] > 0 and device["steps"] > 0
            assert 0 <= device["accuracy"] <= 1 and device["train_loss"] > 0
            assert device["setup_seconds"] > 0
        assert record["bytes_up"] == sum(d["bytes_up"] for d in record["devices"].values())
        assert record["seconds"] >= record["train_seconds"] > 0


def test_flower_rounds_match_the_in_process_engine(deployment, fashion, data_dir):
    """Same devices, same selection, same aggregation: the same model, up to float noise."""
    from engine.federation import Federation

    config = federation_config(RUN_CONFIG, num_devices=NUM_SUPERNODES, data_dir=data_dir)
    federation = Federation(config, dataset=fashion)
    try:
        federation.set_active(DEACTIVATED, False)
        federation.start()
        snapshot = federation.wait(timeout=120)
    finally:
        federation.close()
    flower = deployment["outcome"].rounds
    assert [r.round for r in snapshot.history] == [r["round"] for r in flower]
    for engine_round, flower_round in zip(snapshot.history, flower):
        assert list(engine_round.selected) == flower_round["selected"]
        assert {str(d.device_id): d.samples for d in engine_round.devices} == {
            k: d["samples"] for k, d in flower_round["devices"].items()
        }
        assert flower_round["global_accuracy"] == pytest.approx(engine_round.global_accuracy, abs=0.02)


def test_every_process_of_the_deployment_prints_its_stacks_when_asked_and_keeps_running(loopback):
    """What ``LocalDeployment.run`` does before giving up on a run: each launcher dumps its threads into its log."""
    import signal

    from flower_app.processes import catches
    from tests.conftest import wait_until

    names = [name for name, process in loopback.processes.items()  # a refused SuperNode has exited
             if name.startswith(("superlink", "supernode", "clientapp")) and process.poll() is None]
    pids = sorted(loopback.processes[name].pid for name in names)
    wait_until(lambda: all(catches(pid, signal.SIGUSR1) for pid in pids), timeout=120)  # launchers starting up
    before = {name: len(loopback.log(name)) for name in names}
    assert sorted(loopback.dump_stacks()) == pids  # no other process of the deployment catches it
    for name in names:  # faulthandler's format: "Thread 0x... (most recent call first):"
        wait_until(lambda name=name: "most recent call first" in loopback.log(name)[before[name]:], timeout=30)
    assert all(loopback.processes[name].poll() is None for name in names)
    online = [node for node in connected_nodes(loopback) if node.get("status") == "online"]
    assert len(online) == NUM_SUPERNODES, online


# -- the same deployment, as an attacker sees it ---------------------------------------------------
def connected_nodes(deployment) -> list[dict]:
    listed = deployment.flwr("supernode", "ls", "loopback", "--format", "json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    return json.loads(listed.stdout)["nodes"]


def wait_for_exit(process, timeout: float) -> int | None:
    import subprocess

    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.timeout(180)
def test_superlink_refuses_supernodes_that_are_not_registered(loopback, tmp_path):
    import subprocess

    stranger_key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(stranger_key)],
                   check=True, timeout=30)
    stranger = loopback.start_supernode(0, key=stranger_key, name="supernode-stranger", worker=False)
    keyless = loopback.start_supernode(0, name="supernode-keyless", authenticate=False, worker=False)
    for name, process in (("supernode-stranger", stranger), ("supernode-keyless", keyless)):
        code = wait_for_exit(process, 60)
        log = loopback.log(name)
        assert code not in (None, 0), log[-2000:]
        assert "could not establish a connection to the SuperLink" in log, log[-2000:]  # refused, not broken
    assert "must be registered" in loopback.log("supernode-keyless")
    online = [n for n in connected_nodes(loopback) if n.get("status") == "online"]
    assert len(online) == NUM_SUPERNODES, online  # the registered ones only
    assert all(loopback.processes[f"supernode-{i}"].poll() is None for i in range(NUM_SUPERNODES))


@pytest.mark.timeout(120)
def test_only_the_worker_with_the_secret_can_take_a_supernodes_tasks(loopback):
    """A real SuperNode in process isolation: acquiring its tasks needs the secret its worker is given."""
    import importlib.util

    import httpx

    from flower_app.loopback import SCRIPTS

    spec = importlib.util.spec_from_file_location("script_clientapp_worker", SCRIPTS / "clientapp_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    address = f"127.0.0.1:{loopback.runtime_ports['supernode-0']}"
    secret = loopback._runtime_secret("supernode-0-home")  # the file SuperNode 0 and its worker share
    request = worker.AcquireTaskRequest(supported_task_types=[worker.TaskType.CLIENT_APP])
    options = ["--runtime-api-address", address, "--insecure"]
    signed = worker.runtime_client(worker.parse_args([*options, "--superexec-auth-secret-file", str(secret)]))
    signed.AcquireTask(request)  # accepted (no HTTP error); after the run there is no work to hand out anyway
    anonymous = worker.RuntimeHttpClient.from_server_address(  # no retries: Flower's stop the process on a 401
        server_address=address, insecure=True, root_certificates=None,
        interceptors=[worker.RuntimeVersionHttpInterceptor(component_name=worker.COMPONENT)])
    with pytest.raises(httpx.HTTPStatusError) as refused:
        anonymous.AcquireTask(request)
    assert refused.value.response.status_code in (401, 403)
