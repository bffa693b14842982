"""Issue 14's personalisation and FedBuff on Flower.

Personalisation: the settings travel down, personal state stays in each SuperNode's context.state.

The devices run the same code as in-process (``devices.personal``); what Flower adds is the transport. So:

- fast: the ``Personalization`` settings survive the train message (and SecAgg+'s legacy ``FitIns`` config);
- the real ServerApp (``flower_app.server_app.main``) and the real ClientApp (``flower_app.client_app.app``),
  joined by an in-memory grid (:class:`tests.flower_testing.ClientAppGrid`: a copy of every message, a
  ``Context`` per node kept between messages), run Ditto, and FedPer under Flower's SecAgg+, and match the
  in-process engine on the same seed, device by device; Ditto's personal model and FedPer's head are in the
  node's ``context.state``, never in a reply;
- real processes: the session's shared SuperLink and its three SuperNodes (``flower_deployment``, the
  loopback's long-lived ClientApp workers) run FedPer for two rounds. Each device's personalised accuracy reaches the results file, every reply carries the body
  only (its bytes are the body's, the server decodes it against the body), and the rounds match the
  in-process engine on the same seed. Round 2's personalised accuracy is the device's own head trained
  again: a node that lost its head from ``context.state`` would start from the server's initial one.

FedBuff: ``engine.async_rounds`` on the wall clock. Train messages are pushed to idle nodes, replies pulled as
they come, and every ``buffer_size`` (K = 1 here) of them is one server step; with several nodes training at
once the replies that did not make a step are applied in later ones, stale. In memory (two nodes; the order
is then fixed) the steps are exactly that; on the SuperLink (the session's shared deployment, three
SuperNodes, a second run after FedPer's) every step applies K updates, some stale, and the model learns.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from devices.messages import Personalization, TrainInstructions
from engine.config import FederationConfig
from flower_app import records
from tests.conftest import FLOWER_SUPERNODES

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"

ROUNDS = 2
NUM_NODES = 2
RUN_CONFIG = {
    "num-server-rounds": ROUNDS, "model": "mlp", "train-samples": 600, "test-samples": 200, "min-devices": NUM_NODES,
    "partition": "dirichlet", "alpha": 0.1, "seed": 3,
}
SHAPES = [(3, 2), (2,)]
FEDBUFF = {"num-server-rounds": 3, "model": "mlp", "train-samples": 600, "test-samples": 200,
           "min-devices": NUM_NODES, "strategy": "fedbuff", "strategy-params": "buffer_size=1", "seed": 5}


# -- fast: the messages ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("personal", [Personalization("fedper", 20, 0.1, (2, 3)),
                                      Personalization("ditto", 5, 0.5), Personalization("finetune", 7, 0.0)])
def test_personalisation_settings_travel_in_train_messages(personal):
    from flower_app import secagg

    model = [np.zeros(shape, np.float32) for shape in SHAPES]
    instructions = TrainInstructions(2, model, 1, 16, 0.05, 7, personal=personal)
    content = records.instructions_content(instructions)
    assert records.instructions_from(content).personal == personal
    assert content.config_records[records.CONFIG]["personal-mode"] == personal.mode
    # SecAgg+ speaks Flower's legacy FitIns, whose config takes scalars only
    ins = secagg.fit_ins(instructions, 0.5)
    assert all(isinstance(v, (int, float, str, bytes, bool)) for v in ins.config.values())
    from flwr.compat.common import recorddict_compat as compat

    back, weight = secagg.secure_instructions(compat.fitins_to_recorddict(ins, keep_input=True))
    assert back.personal == personal and weight == 0.5
    plain = records.instructions_from(records.instructions_content(TrainInstructions(1, model)))
    assert plain.personal is None  # a run without personalisation sends none


def test_flower_accepts_personalisation():
    from flower_app.backend import unsupported
    from flower_app.config import server_settings

    for mode in ("finetune", "fedper", "ditto"):
        assert unsupported(FederationConfig(model="mlp", num_devices=3, personalize=mode)) == []
    assert server_settings({"personalize": "ditto", "model": "mlp"}).federation.personalize == "ditto"


def test_flower_says_where_personal_models_stay_and_why_they_are_not_in_the_run_store(capsys):
    """FedPer's heads and Ditto's models stay on the SuperNodes: the CLI and the sidebar say so before a run."""
    import argparse

    from engine.backends import backend_notes
    from engine.cli import check_backend

    for mode, words in (("fedper", "FedPer's heads"), ("ditto", "Ditto's personal models")):
        config = FederationConfig(model="mlp", num_devices=3, personalize=mode)
        for backend in ("flower", "deployment"):
            notes = backend_notes(config, backend)
            assert len(notes) == 1 and words in notes[0] and "resumed Flower run starts them afresh" in notes[0]
        assert backend_notes(config, "in-process") == []  # in-process the run store keeps them
        check_backend(config, argparse.Namespace(backend="flower"))
        printed = capsys.readouterr().err.splitlines()
        assert len(printed) == 1 and printed[0].startswith("note: On Flower, " + words)
    for mode in ("none", "finetune"):  # nothing device-side to keep between rounds
        assert backend_notes(FederationConfig(model="mlp", num_devices=3, personalize=mode), "flower") == []


# -- the real ServerApp and ClientApp, in memory -----------------------------------------------------------------
def in_process(run_config: dict, data_dir: str, fashion, devices: int = NUM_NODES):
    """The in-process engine's run of ``run_config`` on ``devices`` devices (the same seed): its history."""
    from engine.federation import Federation
    from flower_app.config import federation_config

    config = federation_config(run_config, num_devices=devices, data_dir=data_dir)
    return Federation(config, dataset=fashion).run_to_end().history


def assert_rounds_match(flower_rounds: list[dict], history, tolerance: float) -> None:
    """Same selection, global and per-device personalised accuracy as in-process (within ``tolerance``)."""
    assert [r["round"] for r in flower_rounds] == list(range(1, ROUNDS + 1))
    for flower, engine in zip(flower_rounds, history):
        assert flower["problems"] == [] and flower["selected"] == list(engine.selected), flower
        assert flower["global_accuracy"] == pytest.approx(engine.global_accuracy, abs=tolerance)
        assert flower["personalized_accuracy"] == pytest.approx(engine.personalized_accuracy, abs=tolerance)
        for device in engine.devices:
            got = flower["devices"][str(device.device_id)]
            assert got["personalized_accuracy"] == pytest.approx(device.personalized_accuracy, abs=tolerance)
            assert got["received_accuracy"] == pytest.approx(device.received_accuracy, abs=tolerance)


@pytest.mark.parametrize("mode, extra, kept, tolerance", [
    ("ditto", {"ditto-lambda": 0.5}, "device-personal", 1e-4),
    # Flower's SecAgg+ (its real mod, on the ClientApp's train messages): the sum is quantised, so a little looser
    ("fedper", {"secure-aggregation": True}, "device-head", 2e-3),
])
def test_personalisation_through_the_flower_apps_matches_in_process_and_stays_in_context_state(
        mode, extra, kept, tolerance, tmp_path, monkeypatch, server_identity, data_dir, fashion):
    from flwr.app import Context, RecordDict

    from flower_app.server_app import main
    from tests.flower_testing import ClientAppGrid

    from engine.store import RunStore

    monkeypatch.setenv("FL_FLOWER_OUTPUT_DIR", str(tmp_path))
    monkeypatch.setenv("FL_FLOWER_RUNS_DIR", str(tmp_path / "runs"))
    run_config = {**RUN_CONFIG, "personalize": mode, **extra, "data-dir": data_dir}
    grid = ClientAppGrid({100 + p: {"partition-id": p, "num-partitions": NUM_NODES, "data-dir": data_dir}
                          for p in range(NUM_NODES)}, run_config)
    main(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                       run_config={**run_config, "results-file": "rounds.jsonl", "runs-dir": "store"}))
    rounds = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert_rounds_match(rounds, in_process(run_config, data_dir, fashion), tolerance)
    store = RunStore(tmp_path / "runs" / "store")  # the run store the charts and comparisons read
    (run,) = store.list_runs()
    stored = {(r, d): personal for r, d, _, personal in store.device_personalization(run.run_id)}
    if "secure-aggregation" in extra:  # as in-process: nothing per device is recorded under secure aggregation
        assert stored == {}
    else:
        assert stored == pytest.approx({(line["round"], int(d)): v["personalized_accuracy"]
                                        for line in rounds for d, v in line["devices"].items()})
        assert [r.personalized_accuracy for r in store.load_history(run.run_id)] == pytest.approx(
            [line["personalized_accuracy"] for line in rounds])
    for context in grid.contexts.values():  # the node's own, kept for the next round, never sent
        assert kept in context.state.config_records
        assert not any(kept in reply.content.config_records or kept in reply.content.array_records
                       for _, reply in grid.sent)


def test_the_grid_hands_replies_over_as_they_come_and_a_silent_node_times_out(tmp_path, server_identity):
    from flwr.app import Message

    from devices.codec import encode_delta
    from devices.messages import DeviceMetrics, EncodedUpdate
    from engine.results import DeviceProblem
    from flower_app.config import server_settings
    from flower_app.transport import GridTransport
    from tests.flower_testing import StubGrid

    class Grid(StubGrid):  # node 11 answers its first message on the second pull; node 12 never answers
        interval = 0.25  # seconds between pulls, as PollingGrid's

        def __init__(self):
            self.pushed, self.pulls = {}, 0

        def get_node_ids(self):
            return [11, 12]

        def send_and_receive(self, messages, *, timeout=None):
            raise AssertionError("FedBuff never waits for a whole round")

        def push_messages(self, messages):
            for message in messages:
                message.metadata.__dict__["_message_id"] = message.object_id
                self.pushed[message.object_id] = message
            return [m.object_id for m in messages]

        def pull_messages(self, message_ids):
            self.pulls += 1
            payload, _ = encode_delta([np.zeros(shape, np.float32) for shape in SHAPES], "none")
            update = EncodedUpdate(0, 10, DeviceMetrics(0.5, 0.8, 1.0, 0.6, 0.6, 0.75, 3, 0.1), payload=payload)
            return [Message(records.update_content(update), reply_to=self.pushed[i]) for i in message_ids
                    if self.pulls >= 2 and self.pushed[i].metadata.dst_node_id == 11]

    now = [0.0]
    sleep = lambda seconds: now.__setitem__(0, now[0] + seconds)  # noqa: E731 - a clock the waits move
    transport = GridTransport(Grid(), server_settings({"round-timeout": 5.0}), clock=lambda: now[0], sleep=sleep)
    transport.nodes = {0: 11, 1: 12}
    model = [np.zeros(shape, np.float32) for shape in SHAPES]
    assert transport.start({p: TrainInstructions(1, model, seed=p) for p in (0, 1)}) > 0
    checks = []
    first = transport.arrivals(1.0, checks.append)
    assert [(p, type(r).__name__) for p, r in first] == [(0, "EncodedUpdate")] and now[0] == 0.25
    before = now[0]
    assert transport.arrivals(1.0, checks.append) == [] and now[0] - before == pytest.approx(1.0)  # waited it out
    while not (late := transport.arrivals(1.0, checks.append)):
        pass
    assert [p for p, _ in late] == [1] and isinstance(late[0][1], DeviceProblem) and now[0] > 5.0
    assert "round-timeout" in late[0][1].reason and checks  # a stop could end every wait
    assert transport.arrivals(1.0, checks.append) == []  # nothing left in flight: at once
    transport.start({0: TrainInstructions(2, model, seed=5)})
    transport.forget({0})  # its device was switched off: its reply is never handed over
    before = now[0]
    assert transport.arrivals(1.0, checks.append) == [] and now[0] == before


def test_fedbuff_through_the_flower_apps_applies_every_k_replies_with_their_staleness(
        tmp_path, monkeypatch, server_identity, data_dir):
    from flwr.app import Context, RecordDict

    from flower_app.server_app import main
    from tests.flower_testing import ClientAppGrid

    monkeypatch.setenv("FL_FLOWER_OUTPUT_DIR", str(tmp_path))
    run_config = {**FEDBUFF, "data-dir": data_dir}
    grid = ClientAppGrid({100 + p: {"partition-id": p, "num-partitions": NUM_NODES, "data-dir": data_dir}
                          for p in range(NUM_NODES)}, run_config)
    main(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                       run_config={**run_config, "results-file": "rounds.jsonl"}))
    steps = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    # the in-memory nodes answer at once, in the order asked: 0 makes step 1; 1's reply (from the initial model)
    # is step 2, while 0 trains again from step 1's model; that reply is step 3, one step stale
    applied = [{int(d): v["staleness"] for d, v in step["devices"].items()} for step in steps]
    assert applied == [{0: 0}, {1: 1}, {0: 1}], applied
    assert all(step["problems"] == [] for step in steps)
    trains = [reply for _, reply in grid.sent if records.UPDATE in reply.content.config_records]
    assert len(trains) == 4  # both started at first, then the one whose update was applied, after each step


# -- real processes: FedPer and FedBuff over a SuperLink -------------------------------------------------------
DEPLOYMENT_RUNS = {  # on the session's shared deployment (tests/conftest.py flower_deployment): 3 SuperNodes
    "fedper": {**RUN_CONFIG, "min-devices": FLOWER_SUPERNODES, "personalize": "fedper",
               "results-file": "research-fedper.jsonl"},
    "fedbuff": {**FEDBUFF, "min-devices": FLOWER_SUPERNODES, "results-file": "research-fedbuff.jsonl"},
}


@pytest.fixture(scope="module")
def finished_run(data_dir, flower_deployment):
    """``finished_run(name)``: the outcome of :data:`DEPLOYMENT_RUNS`' run ``name`` on the shared SuperLink and its
    SuperNodes (run once, when a test first asks), checked to have completed."""
    local = flower_deployment
    assert local.num_supernodes == FLOWER_SUPERNODES
    done = {}

    def finished(name: str):
        if name not in done:
            outcome = local.run({**DEPLOYMENT_RUNS[name], "data-dir": data_dir}, timeout=700)
            status = local.run_status(outcome.run_id) if outcome.run_id else "not started"
            done[name] = (outcome, status, local.log("superlink")[-3000:])
        outcome, status, logs = done[name]
        assert outcome.returncode == 0 and status == "finished:completed", f"{outcome.output[-3000:]}\n{logs}"
        return outcome

    return finished


@pytest.mark.timeout(1200)  # a loaded machine: the fixture's processes start here
def test_fedper_on_supernodes_keeps_heads_on_the_nodes_and_matches_in_process(finished_run, fashion, data_dir):
    from devices.codec import encode_delta
    from engine.models import ModelRegistry
    from engine.personalization import SharedPart, head_positions

    outcome = finished_run("fedper")
    history = in_process(DEPLOYMENT_RUNS["fedper"], data_dir, fashion, FLOWER_SUPERNODES)
    assert_rounds_match(outcome.rounds, history, tolerance=0.03)  # processes differ in float noise only

    model = ModelRegistry().build("mlp", fashion.input_shape, fashion.num_classes)
    weights = [np.asarray(w) for w in model.get_weights()]
    body = SharedPart(head_positions(model)).of(weights)
    assert len(body) < len(weights)
    body_bytes = len(encode_delta([np.zeros_like(w, np.float32) for w in body], "none")[0])
    for record in outcome.rounds:
        assert all(device["bytes_up"] == body_bytes for device in record["devices"].values()), record
        assert record["raw_bytes_up"] == sum(w.nbytes for w in body) * FLOWER_SUPERNODES
        assert all(device["personalized_accuracy"] is not None for device in record["devices"].values())
    last = outcome.rounds[-1]
    assert last["personalized_accuracy"] > last["device_global_accuracy"] + 0.1  # skewed devices: heads help


@pytest.mark.timeout(1200)
def test_fedbuff_on_supernodes_steps_every_k_replies_on_the_wall_clock(finished_run):
    outcome = finished_run("fedbuff")
    steps = outcome.rounds
    assert [s["round"] for s in steps] == list(range(1, FEDBUFF["num-server-rounds"] + 1))
    for step in steps:
        assert len(step["devices"]) == 1 and step["problems"] == [], step  # K updates per server step
        assert step["simulated_time"] >= 0  # wall-clock seconds to the step's last arrival since the previous
    assert steps[0]["simulated_time"] > 0  # (0 when its update had already arrived, pulled with an earlier one)
    assert sum(d["staleness"] for step in steps for d in step["devices"].values()) > 0  # the slower reply waits
    assert steps[-1]["global_accuracy"] > 0.3  # chance is 0.1
