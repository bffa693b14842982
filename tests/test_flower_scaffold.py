"""SCAFFOLD on Flower: the server's c travels down, each device's c_i lives in its SuperNode's context.state.

On the session's shared deployment (``flower_deployment``, tests/conftest.py):
a real SuperLink and three SuperNodes (the loopback's long-lived ClientApp workers). The ClientApp restores each device's
control variate from the node's ``context.state`` before every round (a lost
state would reset it to zero), so round 2 only matches the in-process math if
the SuperNode kept it. Two rounds must learn and match the in-process engine's
control-variate math on the same seed (same selection, same global model up
to float noise between processes). A fast test checks that the records carry
the control variates both ways and that the loop refuses a bad one.
"""

from __future__ import annotations

import numpy as np
import pytest

from devices.messages import ControlVariate, DeviceMetrics, EncodedUpdate, TrainInstructions
from flower_app import records

ROUNDS = 2
NUM_SUPERNODES = 3
RUN_CONFIG = {
    "num-server-rounds": ROUNDS, "model": "mlp", "train-samples": 900, "test-samples": 300, "min-devices": 3,
    "strategy": "scaffold", "optimizer": "sgd", "learning-rate": 0.1, "local-epochs": 3, "seed": 11,
}
SHAPES = [(3, 2), (2,)]


def test_control_variates_travel_both_ways_and_a_bad_one_is_refused():
    from engine.transport_checks import control_delta_problem

    control = [np.full(shape, 0.25, np.float32) for shape in SHAPES]
    model = [np.zeros(shape, np.float32) for shape in SHAPES]
    instructions = TrainInstructions(2, model, 1, 16, 0.05, 7, control=ControlVariate(control, 0.9))
    back = records.instructions_from(records.instructions_content(instructions))
    assert back.control.local_momentum == pytest.approx(0.9)
    assert all(np.array_equal(a, b) for a, b in zip(back.control.weights, control))
    first = records.instructions_from(records.instructions_content(
        TrainInstructions(1, model, 1, 16, 0.05, 7, control=ControlVariate(None, 0.0))))
    assert first.control == ControlVariate(None, 0.0)  # c is zero before the first aggregation
    plain = records.instructions_from(records.instructions_content(TrainInstructions(1, model, 1, 16, 0.05, 7)))
    assert plain.control is None  # other strategies send none

    metrics = DeviceMetrics(0.5, 0.8, 1.0, 0.6, 0.6, 0.75, 3, 0.1)
    delta = [np.full(shape, -0.5, np.float32) for shape in SHAPES]
    update = EncodedUpdate(1, 10, metrics, payload=b"x", control_delta=delta)
    got, _ = records.update_from(records.update_content(update), device_id=1)
    assert all(np.array_equal(a, b) for a, b in zip(got.control_delta, delta))
    assert control_delta_problem(got.control_delta, model) is None
    assert "shape" in control_delta_problem([np.zeros((2, 2), np.float32), delta[1]], model)
    assert "NaN" in control_delta_problem([np.full((3, 2), 1e300), delta[1]], model)  # inf once float32
    assert "floating point" in control_delta_problem([np.zeros((3, 2), np.int64), delta[1]], model)


@pytest.fixture(scope="module")
def scaffold_run(data_dir, flower_deployment):
    local = flower_deployment
    assert local.num_supernodes == NUM_SUPERNODES
    # the ServerApp saves the global model after each round into weights-file
    run_config = {**RUN_CONFIG, "results-file": "scaffold-rounds.jsonl", "weights-file": "scaffold-weights.npz",
                  "data-dir": data_dir}
    outcome = local.run(run_config, timeout=700)
    status = local.run_status(outcome.run_id) if outcome.run_id else "not started"
    with np.load(local.output_file("scaffold-weights.npz")) as saved:
        weights = [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
    logs = local.log("superlink")[-3000:]
    return {"outcome": outcome, "status": status, "weights": weights, "logs": logs}


@pytest.mark.timeout(1200)  # a loaded machine: the fixture's processes start here
def test_scaffold_on_supernodes_learns_and_matches_the_in_process_math(scaffold_run, fashion, data_dir):
    from engine.federation import Federation
    from flower_app.config import federation_config

    outcome = scaffold_run["outcome"]
    context = f"{outcome.output[-3000:]}\n{scaffold_run['logs']}"
    assert outcome.returncode == 0 and scaffold_run["status"] == "finished:completed", context
    assert [r["round"] for r in outcome.rounds] == list(range(1, ROUNDS + 1)), context
    for record in outcome.rounds:
        assert sorted(record["devices"]) == ["0", "1", "2"] and record["problems"] == [], record
    assert outcome.rounds[-1]["global_accuracy"] > 0.3  # chance is 0.1

    federation = Federation(federation_config(RUN_CONFIG, num_devices=NUM_SUPERNODES, data_dir=data_dir),
                            dataset=fashion)
    snapshot = federation.run_to_end()
    engine_weights = federation.global_weights
    for engine_round, flower_round in zip(snapshot.history, outcome.rounds):
        assert list(engine_round.selected) == flower_round["selected"]
        assert flower_round["global_accuracy"] == pytest.approx(engine_round.global_accuracy, abs=0.03)
    # round 2 used each device's c_i from round 1: had a node lost it, its corrected steps would differ
    difference = max(float(np.abs(a - b).max()) for a, b in zip(scaffold_run["weights"], engine_weights))
    scale = max(float(np.abs(b).max()) for b in engine_weights)
    assert difference < 0.01 * scale, (difference, scale)


def test_the_servers_copy_of_a_devices_control_variate_follows_its_changes_and_returns_after_a_resume():
    from devices.scaffold import updated_control
    from flower_app.device_state import ControlMirror

    rng = np.random.default_rng(3)
    model = [rng.normal(size=shape).astype(np.float32) for shape in SHAPES]
    control = ControlVariate([rng.normal(size=shape).astype(np.float32) for shape in SHAPES], 0.0)
    instruction = TrainInstructions(1, model, 1, 16, 0.05, 7, control=control)
    metrics = DeviceMetrics(0.5, 0.8, 1.0, 0.6, 0.6, 0.75, 3, 0.1)
    mirror, own = ControlMirror(), None
    for _ in range(3):  # the device's own c_i, as devices.device.Device.respond updates it
        trained = [w - 0.1 * rng.normal(size=w.shape).astype(np.float32) for w in model]
        own, delta = updated_control(instruction, own, trained, steps=5)
        assert mirror.outgoing(0, instruction, node=42).control.device_weights is None  # the node holds its own
        mirror.received(0, EncodedUpdate(0, 10, metrics, payload=b"x", control_delta=delta), instruction, node=42)
    mirror.received(1, EncodedUpdate(1, 10, metrics, payload=b"x", control_delta=[np.full((3, 2), np.nan), delta[1]]),
                    instruction, node=43)  # rejected by the round: not followed either
    stored = mirror.states()
    assert sorted(stored) == [0]
    assert all(np.allclose(a, b, rtol=0, atol=1e-5) for a, b in zip(stored[0]["control"], own))

    resumed = ControlMirror()
    resumed.restore(stored)
    sent = resumed.outgoing(0, instruction, node=77)  # a new Flower run: the node starts empty
    assert all(np.array_equal(a, b) for a, b in zip(sent.control.device_weights, stored[0]["control"]))
    wire = records.instructions_from(records.instructions_content(sent))  # it travels as its own packed record
    assert all(np.array_equal(a, b) for a, b in zip(wire.control.device_weights, stored[0]["control"]))
    assert resumed.outgoing(0, TrainInstructions(1, model, 1, 16, 0.05, 7), node=77).control is None  # no SCAFFOLD
    assert records.instructions_from(records.instructions_content(instruction)).control.device_weights is None


def test_a_node_takes_the_stored_control_variate_only_when_it_holds_none_of_its_own():
    from flwr.app import RecordDict

    from devices.device import Device, DeviceData
    from devices.trainer import ModelReplica, OptimizerSpec
    from engine.models import ModelRegistry
    from engine.setup import stored_samples
    from flower_app.node import DEVICE_CONTROL, LocalNode

    rng = np.random.default_rng(5)
    x, y = rng.random((40, 6)).astype(np.float32), rng.integers(0, 3, 40)
    replica = ModelReplica(lambda: ModelRegistry().build("mlp", (6,), 3), OptimizerSpec("sgd", 0.0),
                           samples=stored_samples(x, "classification"))
    node = LocalNode(None, Device(0, DeviceData(x, y, x[:8], y[:8])), replica)
    weights = replica.get_weights()
    stored = [np.full(w.shape, 0.5, np.float32) for w in weights]
    instruction = TrainInstructions(3, weights, 1, 8, 0.05, 7, control=ControlVariate(None, 0.0, stored))

    empty = RecordDict()  # a resumed run's first message: the node's context.state holds nothing yet
    update = node.respond_with_state(instruction, empty)
    after = records.to_weights(empty.config_records[DEVICE_CONTROL])
    assert all(np.allclose(a - d, s, atol=1e-5) for a, d, s in zip(after, update.control_delta, stored))

    own = RecordDict()
    own.config_records[DEVICE_CONTROL] = records.to_arrays([np.zeros(w.shape, np.float32) for w in weights])
    update = node.respond_with_state(instruction, own)  # it holds its own (zero): the stored one is not used
    after = records.to_weights(own.config_records[DEVICE_CONTROL])
    assert all(np.allclose(a, d, atol=1e-6) for a, d in zip(after, update.control_delta))


def test_the_flwr_run_serverapp_scales_the_server_control_by_the_share_of_devices_that_trained(
        tmp_path, monkeypatch, server_identity, data_dir, fashion):
    """SCAFFOLD's c moves by |S|/N of the mean c_i change. The ``flwr run`` ServerApp is never told N; it takes
    the partitions that joined (``known_devices``). Unbound, it used |S| and c moved N/|S| times too far
    (measured: round 2 accuracy 0.473 vs 0.447 in-process, 5 devices, 2 a round). The real ServerApp and
    ClientApp, in memory, must match the in-process engine's one-by-one training exactly."""
    import json

    from flwr.app import Context, RecordDict

    from engine.federation import Federation
    from flower_app.config import federation_config
    from flower_app.server_app import known_devices, main
    from tests.flower_testing import ClientAppGrid

    assert known_devices({}, 2) == 2 and known_devices({0: 10, 4: 11}, 2) == 5
    devices = 4
    run_config = {**RUN_CONFIG, "train-samples": 400, "test-samples": 100, "local-epochs": 1, "min-devices": 2,
                  "fraction": 0.5, "data-dir": data_dir}
    monkeypatch.setenv("FL_FLOWER_OUTPUT_DIR", str(tmp_path))
    grid = ClientAppGrid({100 + p: {"partition-id": p, "num-partitions": devices, "data-dir": data_dir}
                          for p in range(devices)}, run_config)
    main(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                       run_config={**run_config, "results-file": "rounds.jsonl", "weights-file": "weights.npz"}))
    rounds = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    with np.load(tmp_path / "weights.npz") as saved:
        flower = [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
    config = federation_config(run_config, num_devices=devices, data_dir=data_dir).with_changes(stack_width=1)
    federation = Federation(config, dataset=fashion)
    try:
        history = federation.run_to_end().history
        engine = federation.global_weights
    finally:
        federation.close()
    assert [len(r["selected"]) for r in rounds] == [2] * ROUNDS  # partial participation: |S|/N = 1/2
    for flower_round, engine_round in zip(rounds, history):
        assert flower_round["selected"] == list(engine_round.selected)
        assert flower_round["global_accuracy"] == pytest.approx(engine_round.global_accuracy, abs=1e-9)
    assert max(float(np.abs(a - b).max()) for a, b in zip(flower, engine)) < 1e-5
