"""FlowerFederation: the dashboard's Federation API on a real Flower deployment over 127.0.0.1.

The last tests start a SuperLink and three SuperNodes through ``FlowerFederation``
(device 2 deactivated from the start), run two MLP rounds on a small slice of
Fashion-MNIST, and check what a dashboard reads: snapshots, history, device
statuses, predictions, and that nothing survives ``close``.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from engine.config import ConfigError, FederationConfig
from engine.results import DeviceStatus, RunStatus
from engine.backends import BACKENDS, create_federation
from flower_app.backend import FlowerFederation, round_result, run_config_for, unsupported
from flower_app.config import federation_config

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"

NUM_DEVICES = 3
DEACTIVATED = 2
ROUNDS = 2


# -- fast: configuration -------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(secure_aggregation=True), "secure aggregation"),
        (dict(slowdowns={1: 3.0}), "slowdowns"),
        (dict(num_devices=50), "too many"),
    ],
)
def test_settings_flower_cannot_run_raise_config_error(fashion, changes, words):
    settings = dict(model="mlp", num_devices=3, train_samples=600)
    settings.update(changes)
    config = FederationConfig(**settings)
    assert any(words in problem for problem in unsupported(config))
    with pytest.raises(ConfigError, match=words) as raised:
        FlowerFederation(config, dataset=fashion)
    assert all(problem.startswith("Flower backend:") for problem in raised.value.problems)
    with pytest.raises(ConfigError):
        create_federation(config, "flower", dataset=fashion)


def test_run_config_is_the_inverse_of_the_flower_mapping(tmp_path):
    config = FederationConfig(
        model="mlp", num_devices=4, partition="dirichlet", alpha=0.3, rounds=7, learning_rate=0.01,
        optimizer="sgd", fraction=0.5, min_devices=2, seed=5, strategy="fedprox",
        strategy_params={"proximal_mu": 0.05}, train_samples=1200, test_samples=300, faults={1: "nan"},
        data_dir=str(tmp_path), clip_norm=1.5, noise_multiplier=0.7, local_noise_multiplier=0.2, dp_delta=1e-6,
        compression="topk", topk_fraction=0.05, dropout=0.25, round_deadline=30.0,
    )
    run_config = run_config_for(config, tmp_path / "r.jsonl", tmp_path / "off.txt")
    assert run_config["results-file"].endswith("r.jsonl") and run_config["num-server-rounds"] == 7
    assert federation_config(run_config, 4, str(tmp_path)) == config.with_changes(workers=2)
    assert run_config_for(config.with_changes(rounds=None))["num-server-rounds"] >= 10**6
    assert unsupported(config) == []


def test_unknown_backend_is_refused_and_in_process_is_the_engine(fashion):
    from engine.federation import Federation

    assert BACKENDS == ("in-process", "flower")
    config = FederationConfig(model="mlp", num_devices=2, train_samples=400, test_samples=100, rounds=1)
    with pytest.raises(ConfigError, match="unknown backend"):
        create_federation(config, "grpc", dataset=fashion)
    federation = create_federation(config, "in-process", dataset=fashion)
    try:
        assert isinstance(federation, Federation)
    finally:
        federation.close()


def test_a_results_line_becomes_a_round_result():
    line = {
        "run_id": 3, "round": 2, "global_accuracy": 0.7, "global_loss": 0.9, "seconds": 14.0,
        "train_seconds": 13.5, "eval_seconds": 0.5, "selected": [0, 1], "deactivated": [2],
        "bytes_down": 800, "bytes_up": 790,
        "devices": {"1": {"samples": 40, "train_loss": 0.5, "train_accuracy": 0.8, "received_accuracy": 0.6,
                          "loss": None, "accuracy": 0.75, "seconds": 1.2, "bytes_up": 395},
                    "0": {"samples": 50, "train_loss": 0.4, "train_accuracy": 0.85, "received_accuracy": 0.6,
                          "loss": 0.7, "accuracy": 0.7, "seconds": 1.1, "bytes_up": 395}},
        "problems": [{"partition_id": 3, "node_id": 9, "kind": "rejected", "reason": "nan"}],
        "confusion": [[3, 1], [0, 4]],
    }
    result = round_result(line, num_devices=4)
    assert (result.round, result.selected, result.bytes_up) == (2, (0, 1), 790)
    assert [d.device_id for d in result.devices] == [0, 1] and np.isnan(result.devices[1].loss)
    assert result.problems[0].device_id == 3 and result.problems[0].kind == "rejected"
    assert result.confusion.shape == (2, 2) and result.sampling_rate == pytest.approx(2 / 3)


# -- real processes ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flower_run(fashion, data_dir, tmp_path_factory):
    """Three SuperNodes, device 2 deactivated from the start, two rounds, recorded; everything closed afterwards."""
    from engine.store import RunStore

    config = FederationConfig(
        model="mlp", num_devices=NUM_DEVICES, train_samples=1500, test_samples=500, rounds=ROUNDS,
        min_devices=2, data_dir=data_dir, clip_norm=2.0, local_noise_multiplier=0.001, compression="q8",
    )
    store = RunStore(tmp_path_factory.mktemp("flower-runs"))
    federation = create_federation(config, "flower", dataset=fashion, store=store)
    assert isinstance(federation, FlowerFederation)
    before = federation.snapshot()
    federation.set_active(DEACTIVATED, False)
    started = time.monotonic()
    federation.start()
    starting = federation.snapshot()
    federation.pause()  # not yet running rounds: a pause holds the next round ...
    paused = federation.snapshot()
    federation.resume()  # ... and resume lets it go
    final = federation.wait(timeout=150)
    seconds = time.monotonic() - started
    probabilities = federation.predict(fashion.x_test[:16].astype(np.float32) / 255.0)
    workdir = federation.workdir
    close_started = time.monotonic()
    federation.close()
    return {
        "store": store, "federation": federation, "before": before, "starting": starting, "paused": paused, "final": final,
        "seconds": seconds, "probabilities": probabilities, "close_seconds": time.monotonic() - close_started,
        "workdir": workdir,
    }


def _context(run) -> str:
    federation = run["federation"]
    return f"{run['final'].message}\n{federation.deployment.log('superlink')[-2000:]}"


@pytest.mark.timeout(240)
def test_flower_federation_trains_and_reports_like_the_engine(flower_run):
    final = flower_run["final"]
    assert flower_run["before"].status is RunStatus.READY
    assert flower_run["starting"].status is RunStatus.WAITING
    assert "Starting Flower SuperLink and 3 SuperNodes" in flower_run["starting"].message
    assert flower_run["paused"].status is RunStatus.PAUSED
    assert final.status is RunStatus.FINISHED, _context(flower_run)
    assert [r.round for r in final.history] == [1, 2] and final.round == ROUNDS
    assert final.history[-1].global_accuracy > 0.3  # chance is 0.1
    assert int(final.history[-1].confusion.sum()) == 500
    assert final.model_version == ROUNDS
    assert flower_run["seconds"] < 150


def test_privacy_and_compression_travel_and_the_run_is_recorded(flower_run):
    """Local DP (clipping, noise) and q8 compression on the wire; the ServerApp records rounds and checkpoints."""
    final, store, run_id = flower_run["final"], flower_run["store"], flower_run["federation"].run_id
    for result in final.history:
        assert result.epsilon is not None and result.epsilon > 0  # the accountant ran on the server
        assert result.compression_ratio > 3.5  # bytes counted from the payloads Flower carried
    history = store.load_history(run_id)
    assert [r.round for r in history] == [1, 2] and store.summary(run_id).status == "finished"
    assert history[-1].global_accuracy == pytest.approx(final.history[-1].global_accuracy)
    checkpoint = store.load_checkpoint(run_id)
    assert checkpoint.round == ROUNDS and len(checkpoint.weights) == len(flower_run["federation"].global_weights)


def test_deactivated_device_sits_out_and_shows_inactive(flower_run):
    final = flower_run["final"]
    for result in final.history:
        assert result.selected == (0, 1) and DEACTIVATED not in result.selected
        assert [d.device_id for d in result.devices] == [0, 1] and result.problems == ()
        for device in result.devices:
            assert device.samples > 0 and 0 <= device.accuracy <= 1 and device.train_loss > 0
    states = {d.device_id: d for d in final.devices}
    assert states[DEACTIVATED].status is DeviceStatus.INACTIVE and not states[DEACTIVATED].active
    assert states[0].status is DeviceStatus.SENT and states[1].status is DeviceStatus.SENT
    federation = flower_run["federation"]
    assert [d.samples for d in final.devices] == [d.data.num_train for d in federation.devices]
    assert federation.label_histogram.shape == (NUM_DEVICES, 10)
    assert federation.label_histogram.sum() == sum(d.data.num_train for d in federation.devices)


def test_predict_uses_the_latest_global_model(flower_run):
    probabilities = flower_run["probabilities"]
    assert probabilities.shape == (16, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    federation = flower_run["federation"]
    assert federation._weights_version == ROUNDS  # loaded from the ServerApp's weights file


def test_close_leaves_no_processes(flower_run):
    federation = flower_run["federation"]
    assert federation.leftovers == [], "processes outlived the teardown (killed then)"
    assert federation.remaining_processes() == []
    assert all(process.poll() is not None for process in federation.deployment.processes.values())
    assert flower_run["close_seconds"] < 30
    assert not flower_run["workdir"].exists()  # a successful run's working folder is removed


@pytest.mark.timeout(150)
def test_stop_mid_run_is_prompt_and_leaves_no_processes(fashion, data_dir):
    config = FederationConfig(model="mlp", num_devices=2, train_samples=1000, test_samples=200, rounds=5,
                              data_dir=data_dir)
    federation = FlowerFederation(config, dataset=fashion)
    try:
        federation.start()
        deadline = time.monotonic() + 60
        while "flwr-run" not in federation.deployment.processes and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "flwr-run" in federation.deployment.processes, federation.snapshot().message
        time.sleep(3)  # the run is submitted: the ServerApp and the first ClientApps are starting
        started = time.monotonic()
        federation.stop(wait=True, timeout=60)
        stop_seconds = time.monotonic() - started
        snapshot = federation.snapshot()
    finally:
        federation.close()
    assert snapshot.status is RunStatus.STOPPED, snapshot.message
    assert stop_seconds < 30
    assert federation.remaining_processes() == []  # anything that outlived SIGTERM was SIGKILLed
    assert all(process.poll() is not None for process in federation.deployment.processes.values())
    federation.start()  # a stopped Flower run is not continued: the UI gets a message, nothing crashes
    assert federation.snapshot().status is RunStatus.STOPPED
    assert "cannot be continued" in federation.snapshot().message


def test_the_dashboard_reaches_flower_only_through_the_engine():
    """``app/`` imports ``engine/`` (and ``data/``), never ``flower_app``: engine.backends is the door."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    imported = set()
    for path in (root / "app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add((path.name, node.module.split(".")[0]))
            elif isinstance(node, ast.Import):
                imported.update((path.name, alias.name.split(".")[0]) for alias in node.names)
    assert [(name, module) for name, module in imported if module == "flower_app"] == []
    assert ("state.py", "engine") in imported
