"""Secure aggregation on Flower with Flower's own SecAgg+, on a real SuperLink and three real SuperNodes.

On the session's shared deployment (``flower_deployment``, tests/conftest.py).
The app is the product's, except that its
ServerApp is :mod:`flower_app.testing.recording_server_app`: the real one,
noting what every reply it pulls carries. Two rounds of FedAvg with
``secure-aggregation=true`` run Flower's ``SecAggPlusWorkflow`` against the
ClientApp's ``secaggplus_mod``; they must learn, match the in-process engine's
simulated secure aggregation on the same seed, and the ServerApp must never
receive a device's update (only masked vectors that look uniformly random).
The same deployment then checks that a failed run makes our ``flwr run``
wrapper exit non-zero with one line, and that ``runs-dir`` outside the
server's runs folder is refused.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.flower_testing import app_copy

ROUNDS = 2
NUM_SUPERNODES = 3
RUN_CONFIG = {
    "num-server-rounds": ROUNDS, "model": "mlp", "train-samples": 900, "test-samples": 300, "min-devices": 3,
    "secure-aggregation": True, "seed": 5,
}


def recording_project(root, folder):
    """A copy of the app whose pyproject names the recording ServerApp."""
    return app_copy(root, folder, {'serverapp = "flower_app.server_app:app"':
                                   'serverapp = "flower_app.testing.recording_server_app:app"'})


@pytest.fixture(scope="module")
def secure_run(data_dir, tmp_path_factory, flower_deployment):
    from flower_app.loopback import PROJECT_ROOT
    from flower_app.testing.recording_server_app import RECEIVED_FILE

    local = flower_deployment
    assert local.num_supernodes == NUM_SUPERNODES
    project = recording_project(PROJECT_ROOT, tmp_path_factory.mktemp("secagg-app"))
    received_file = local.output_dir / RECEIVED_FILE  # only this module's runs use the recording ServerApp
    received_file.unlink(missing_ok=True)
    # a SecAgg+ stage waits round-timeout s: a device that stalls is then that round's problem, reported, and
    # the ServerApp's log says which node it waited for (a hang seen once in CI, stop 22), within the run's timeout
    run_config = {**RUN_CONFIG, "results-file": "secagg-rounds.jsonl", "data-dir": data_dir, "round-timeout": 150}
    outcome = local.run(run_config, timeout=700, project_root=project)
    status = local.run_status(outcome.run_id) if outcome.run_id else "not started"
    received = [json.loads(line) for line in received_file.read_text().splitlines()]
    failing = subprocess.run(
        [sys.executable, "-m", "flower_app.run", ".", "loopback", "--stream",
         "--run-config", 'runs-dir="/etc/x"'],
        cwd=project, env=local.env("cli-home"), capture_output=True, text=True, timeout=600,
    )
    logs = local.log("superlink")[-3000:] + local.log_tails(2500)
    return {"outcome": outcome, "status": status, "received": received, "failing": failing, "logs": logs}


@pytest.mark.timeout(1200)  # a loaded machine: the fixture's processes start here
def test_secure_rounds_on_flower_learn_and_match_the_in_process_engine(secure_run, data_dir):
    from flower_app.loopback_compare import in_process_rounds

    outcome = secure_run["outcome"]
    context = f"{outcome.output[-3000:]}\n{secure_run['logs']}"
    assert outcome.returncode == 0 and secure_run["status"] == "finished:completed", context
    assert [r["round"] for r in outcome.rounds] == list(range(1, ROUNDS + 1)), context
    for record in outcome.rounds:
        assert sorted(record["devices"]) == ["0", "1", "2"] and record["problems"] == [], record
        assert all(device["samples"] > 0 and device["bytes_up"] > 0 for device in record["devices"].values())
    assert outcome.rounds[-1]["global_accuracy"] > 0.3  # chance is 0.1
    engine = in_process_rounds(RUN_CONFIG, NUM_SUPERNODES, data_dir)  # simulated masking, same seed
    for flower_round, engine_round in zip(outcome.rounds, engine):
        assert flower_round["global_accuracy"] == pytest.approx(engine_round["global_accuracy"], abs=0.03)


def test_the_server_never_holds_an_individual_update(secure_run):
    train = [r for r in secure_run["received"] if r["type"] == "train"]
    assert train and not any(r["error"] for r in train), train[:3]
    # Flower's four SecAgg+ stages per round, one reply per device each
    assert len(train) == ROUNDS * 4 * NUM_SUPERNODES
    for reply in train:
        assert all(size == 0 for size in reply["arrays"].values()), reply  # no array ever carries an update
        assert list(reply["configs"]) != [] and "metrics" not in reply.get("arrays", {})
    masked = [r["masked"] for r in train if "masked" in r]
    assert len(masked) == ROUNDS * NUM_SUPERNODES
    for vector in masked:  # uniformly random looking: a bare quantized delta would sit near 0.0005
        assert vector["values"] > 100_000 and 0.45 < vector["mean_fraction"] < 0.55, vector


def test_a_failed_run_exits_non_zero_with_one_line(secure_run):
    failing = secure_run["failing"]
    last = failing.stderr.strip().splitlines()[-1] if failing.stderr.strip() else ""
    assert failing.returncode == 1, failing.stdout[-2000:] + failing.stderr[-2000:]
    assert "finished:failed" in last and "runs-dir='/etc/x'" in last and "outside" in last, last
