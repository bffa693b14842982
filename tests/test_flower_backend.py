"""Flower as a transport of the one ``engine.federation.Federation``: real SuperLink and SuperNodes on 127.0.0.1.

The module's deployment (one per module: real processes are slow) is a SuperLink in
process isolation and two SuperNodes; this test process plays the run's ServerApp
(``flower_app.serverapp_link``). The federation trains two MLP rounds on a small
slice of Fashion-MNIST with local DP and q8 compression, device 1 is deactivated
while round 1 runs, the run is recorded in a run store, then continued and stopped
mid-round; the tests check what a dashboard reads.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from engine.config import ConfigError, FederationConfig
from engine.federation import Federation
from engine.results import DeviceStatus, RunStatus
from engine.backends import BACKENDS, create_federation
from flower_app.backend import MAX_DEVICES, flower_federation, run_config_for, unsupported
from flower_app.config import federation_config

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"

NUM_DEVICES = 2
DEACTIVATED = 1
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
        flower_federation(config, dataset=fashion)
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
    run_config = run_config_for(config)
    assert run_config["num-server-rounds"] == 7 and "results-file" not in run_config
    assert federation_config(run_config, 4, str(tmp_path)) == config.with_changes(workers=2)
    assert run_config_for(config.with_changes(rounds=None))["num-server-rounds"] >= 10**6
    assert unsupported(config) == []


def test_unknown_backend_is_refused_and_in_process_is_the_engine(fashion):
    assert BACKENDS == ("in-process", "flower", "deployment")
    config = FederationConfig(model="mlp", num_devices=2, train_samples=400, test_samples=100, rounds=1)
    with pytest.raises(ConfigError, match="unknown backend"):
        create_federation(config, "grpc", dataset=fashion)
    federation = create_federation(config, "in-process", dataset=fashion)
    try:
        assert isinstance(federation, Federation)
    finally:
        federation.close()


def test_only_loopback_is_capped_at_a_few_devices():
    config = FederationConfig(model="mlp", num_devices=MAX_DEVICES + 20, train_samples=6000)
    assert any("too many" in problem for problem in unsupported(config, loopback=True))
    assert unsupported(config, loopback=False) == []


# -- real processes ------------------------------------------------------------------------------
def _wait_for(federation, condition, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = federation.snapshot()
        if condition(snapshot) or not snapshot.is_live and snapshot.status is not RunStatus.READY:
            return snapshot
        time.sleep(0.1)
    return federation.snapshot()


@pytest.fixture(scope="module")
def flower_run(fashion, data_dir, tmp_path_factory):
    """Two SuperNodes; device 1 switched off while round 1 trains; two rounds, recorded; then continued, stopped."""
    from engine.store import RunStore
    from flower_app.processes import processes_tagged

    config = FederationConfig(
        model="mlp", num_devices=NUM_DEVICES, train_samples=1000, test_samples=300, rounds=ROUNDS,
        min_devices=1, data_dir=data_dir, clip_norm=2.0, local_noise_multiplier=0.001, compression="q8",
    )
    store = RunStore(tmp_path_factory.mktemp("flower-runs"))
    federation = create_federation(config, "flower", dataset=fashion, store=store)
    deployment = federation.remote.deployment
    run = {"federation": federation, "store": store, "tag": deployment.tag, "workdir": deployment.workdir}
    try:
        assert isinstance(federation, Federation) and federation.remote is not None
        run["before"] = _wait_for(federation, lambda s: all(d.detail.startswith("node ") for d in s.devices), 60)
        federation.start()
        run["training"] = _wait_for(federation, lambda s: s.devices[DEACTIVATED].status is DeviceStatus.TRAINING, 240)
        federation.set_active(DEACTIVATED, False)  # mid-run: round 1 keeps it, round 2 goes without
        run["final"] = federation.wait(timeout=300)
        run["summary"] = store.summary(federation.run_id)
        run["history"] = store.load_history(federation.run_id)
        run["checkpoint"] = store.load_checkpoint(federation.run_id)
        run["probabilities"] = federation.predict(fashion.x_test[:16].astype(np.float32) / 255.0)
        federation.set_rounds(ROUNDS + 3)
        federation.start()  # the ServerApp is this process: a finished run can go on
        _wait_for(federation, lambda s: s.status is RunStatus.RUNNING and "Round 3" in s.message, 60)
        started = time.monotonic()
        federation.stop(wait=True, timeout=60)
        run["stop_seconds"], run["stopped"] = time.monotonic() - started, federation.snapshot()
        run["revoked"] = _revoked_mid_round(federation, deployment)
    finally:
        started = time.monotonic()
        federation.close()
        run["close_seconds"] = time.monotonic() - started
    run["left"] = processes_tagged(run["tag"])
    run["workdir_left"] = run["workdir"].exists()
    return run


def _revoked_mid_round(federation, deployment) -> dict:
    """Continue, then end the run at the SuperLink (``flwr stop``, as its owner could) while a round waits on it.

    The SuperLink then answers this process's ServerApp token with 401, which Flower's own retry invoker
    answers with SIGINT to its process; a SIGINT now is recorded (pytest would be interrupted otherwise)."""
    import signal

    interrupts = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupts.append(time.monotonic()))
    try:
        federation.set_rounds(ROUNDS + 1000)  # it trains on until the SuperLink refuses it
        federation.start()
        _wait_for(federation, lambda s: s.status is RunStatus.RUNNING and "Round 3" in s.message, 60)
        stopped = deployment.flwr("stop", str(federation.remote.flower_run_id), "loopback")
        final = _wait_for(federation, lambda s: not s.is_live, 90)
        time.sleep(1.5)  # room for a heartbeat or a roster look after the failure
    finally:
        signal.signal(signal.SIGINT, previous)
    return {"flwr_stop": stopped, "final": final, "interrupts": interrupts,
            "status": deployment.run_status(federation.remote.flower_run_id)}


def _context(run) -> str:
    return f"{run['final'].message}\n{run['federation'].remote.deployment.log('superlink')[-2000:]}"


@pytest.mark.timeout(600)
def test_flower_federation_trains_and_reports_like_the_engine(flower_run):
    final = flower_run["final"]
    before = flower_run["before"]
    assert before.status is RunStatus.READY
    assert [d.status for d in before.devices] == [DeviceStatus.IDLE] * NUM_DEVICES, before.devices  # connected
    assert final.status is RunStatus.FINISHED, _context(flower_run)
    assert [r.round for r in final.history] == [1, 2] and final.round == ROUNDS
    assert final.history[-1].global_accuracy > 0.3  # chance is 0.1
    assert int(final.history[-1].confusion.sum()) == 300
    assert final.model_version == ROUNDS


def test_privacy_and_compression_travel_and_the_run_is_recorded(flower_run):
    """Local DP (clipping, noise) and q8 compression on the wire; the federation records rounds and checkpoints."""
    final = flower_run["final"]
    for result in final.history:
        assert result.epsilon is not None and result.epsilon > 0  # the accountant ran on the server
        assert result.compression_ratio > 3.5  # bytes counted from the payloads Flower carried
    assert flower_run["summary"].status == "finished"
    history = flower_run["history"]  # as recorded after round 2
    assert [r.round for r in history] == [1, 2]
    assert history[-1].global_accuracy == pytest.approx(final.history[-1].global_accuracy)
    checkpoint = flower_run["checkpoint"]
    assert checkpoint.round == ROUNDS and len(checkpoint.weights) == len(flower_run["federation"].global_weights)


def test_a_device_deactivated_mid_run_sits_out_later_rounds(flower_run):
    first, second = flower_run["final"].history
    assert first.selected == (0, 1) and [d.device_id for d in first.devices] == [0, 1]
    assert second.selected == (0,) and [d.device_id for d in second.devices] == [0]
    for device in first.devices:
        assert device.samples > 0 and 0 <= device.accuracy <= 1 and device.train_loss > 0
    states = flower_run["final"].devices
    assert states[DEACTIVATED].status is DeviceStatus.INACTIVE and not states[DEACTIVATED].active
    assert states[0].status is DeviceStatus.SENT and states[0].detail.startswith("node ")
    assert [d.samples for d in states] == [d.data.num_train for d in flower_run["federation"].devices]


def test_predict_uses_the_global_model_held_here(flower_run):
    probabilities = flower_run["probabilities"]
    assert probabilities.shape == (16, 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


def test_continue_then_stop_mid_round_is_prompt_and_close_leaves_nothing_behind(flower_run):
    stopped = flower_run["stopped"]
    assert stopped.status is RunStatus.STOPPED, stopped.message
    assert stopped.round == ROUNDS  # round 3 was abandoned, completed rounds are kept
    assert flower_run["stop_seconds"] < 20
    assert flower_run["close_seconds"] < 30
    assert flower_run["left"] == []
    assert flower_run["workdir"].name.startswith("flower-federation-")
    assert not flower_run["workdir_left"], f"the deployment's scratch folder {flower_run['workdir']} is left"


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


def test_a_run_the_superlink_stops_fails_alone_and_this_process_lives_on(flower_run):
    """A SuperLink that no longer accepts the ServerApp's token ends that run only, with one clear line."""
    revoked = flower_run["revoked"]
    assert revoked["flwr_stop"].returncode == 0, revoked["flwr_stop"].stdout + revoked["flwr_stop"].stderr
    assert revoked["interrupts"] == []  # Flower's invoker would have sent SIGINT here
    final = revoked["final"]
    assert final.status is RunStatus.FAILED, final.message
    assert final.message.startswith("Training failed: the SuperLink no longer accepts this run's ServerApp (HTTP 401)")
    assert "\n" not in final.message and final.round >= ROUNDS and len(final.history) == final.round
    store, run_id = flower_run["store"], flower_run["federation"].run_id
    assert [r.round for r in store.load_history(run_id)] == list(range(1, final.round + 1))  # completed rounds kept
    assert store.summary(run_id).status == "failed"
    assert revoked["status"] == "finished:stopped"


def test_the_links_retries_raise_on_a_refused_token_and_give_up_on_a_silent_superlink():
    """flower_app.link_retry: 401/403 raise TaskRevoked at once (no SIGINT), 503 is retried, silence ends."""
    import httpx

    from flower_app.link_retry import LinkError, TaskRevoked, link_retry_invoker

    request = httpx.Request("POST", "https://127.0.0.1:1/v1/runtime/pull-messages")
    calls = []

    def answer(*statuses):
        def call():
            calls.append(statuses[min(len(calls), len(statuses) - 1)])
            response = httpx.Response(calls[-1], request=request, text="{}")
            response.raise_for_status()
            return "ok"
        return call

    for status in (401, 403):
        calls.clear()
        with pytest.raises(TaskRevoked, match=f"HTTP {status}"):
            link_retry_invoker("127.0.0.1:1").invoke(answer(status))
        assert calls == [status]  # refused once: no retry, no signal
    calls.clear()
    assert link_retry_invoker("127.0.0.1:1").invoke(answer(503, 200)) == "ok" and calls == [503, 200]
    calls.clear()
    with pytest.raises(httpx.HTTPStatusError):  # e.g. 413: HttpGrid handles it itself
        link_retry_invoker("127.0.0.1:1").invoke(answer(413))
    with pytest.raises(LinkError, match="did not answer for"):
        link_retry_invoker("127.0.0.1:1", max_seconds=0.3).invoke(
            lambda: httpx.post("http://127.0.0.1:1/", timeout=1.0))  # nothing listens on port 1
