"""Durable runs: the SQLite run store, checkpoints, resume, crash safety, export of metrics."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from engine.config import FederationConfig
from engine.federation import Federation
from engine.results import RunStatus
from engine.store import RunNotFound, RunStore
from tests.conftest import PROJECT_ROOT, wait_until

SMALL = dict(model="mlp", num_devices=3, train_samples=3000, test_samples=1000)


def finished(federation):
    federation.start()
    snapshot = federation.wait(timeout=120)
    federation.close()
    assert snapshot.status is RunStatus.FINISHED, snapshot.message
    return snapshot


def test_a_run_is_recorded_round_by_round_and_reads_back_identically(fashion, tmp_path):
    store = RunStore(tmp_path, keep_last=1)
    federation = Federation(FederationConfig(**SMALL, rounds=3), dataset=fashion, store=store, label="demo")
    snapshot = finished(federation)
    summary = store.summary(federation.run_id)
    assert (summary.rounds, summary.status, summary.label) == (3, "finished", "demo")
    assert summary.final_accuracy == snapshot.history[-1].global_accuracy
    assert summary.best_accuracy == max(r.global_accuracy for r in snapshot.history)
    stored = store.load_history(federation.run_id)
    assert [r.to_json_dict() for r in stored] == [r.to_json_dict() for r in snapshot.history]
    checkpoint = store.load_checkpoint(federation.run_id)
    assert checkpoint.round == 3
    assert all(np.array_equal(a, b) for a, b in zip(checkpoint.weights, federation.global_weights))
    kept = store.checkpoint_rounds(federation.run_id)
    assert 3 in kept and summary.best_round in kept and len(kept) <= 2  # last one plus the best
    assert store.load_config(federation.run_id) == federation.config


def test_resume_continues_seamlessly_with_the_strategy_state(fashion, tmp_path):
    store = RunStore(tmp_path)
    config = FederationConfig(**SMALL, rounds=2, strategy="fedadam", faults={2: "crash"})
    first = Federation(config, dataset=fashion, store=store)
    finished(first)
    reopened = Federation.reopen(store, first.run_id, more_rounds=1, dataset=fashion)
    assert reopened.snapshot().round == 2
    assert all(np.array_equal(a, b) for a, b in zip(reopened.global_weights, first.global_weights))
    for name in ("_m", "_v"):
        assert all(np.array_equal(a, b) for a, b in zip(getattr(reopened.strategy, name), getattr(first.strategy, name)))
    snapshot = finished(reopened)
    assert [r.round for r in snapshot.history] == [1, 2, 3]
    assert [r.round for r in store.load_history(first.run_id)] == [1, 2, 3]
    assert snapshot.history[-1].problems[0].device_id == 2  # same devices, same faults


def test_secure_aggregation_runs_store_nothing_per_device(fashion, tmp_path):
    store = RunStore(tmp_path)
    federation = Federation(FederationConfig(**SMALL, rounds=1, secure_aggregation=True), dataset=fashion,
                            store=store)
    finished(federation)
    assert store.summary(federation.run_id).private
    assert store.device_accuracy(federation.run_id) == []
    record = store.load_history(federation.run_id)[0]
    assert record.devices == () and record.selected == () and record.global_accuracy > 0.3


def test_metrics_export_and_deletion(fashion, tmp_path):
    store = RunStore(tmp_path)
    federation = Federation(FederationConfig(**SMALL, rounds=2), dataset=fashion, store=store)
    finished(federation)
    csv_text = store.export_metrics(federation.run_id, "csv").splitlines()
    assert csv_text[0].startswith("round,global_accuracy,global_loss") and len(csv_text) == 3
    exported = json.loads(store.export_metrics(federation.run_id, "json"))
    assert len(exported["rounds"]) == 2 and len(exported["rounds"][0]["devices"]) == 3
    other = store.create_run(FederationConfig())
    store.delete_run(federation.run_id)
    assert not store.run_dir(federation.run_id).exists()
    with pytest.raises(RunNotFound):
        store.summary(federation.run_id)
    assert [r.run_id for r in store.list_runs()] == [other]
    store.delete_all()
    assert store.list_runs() == []


def _stored_rounds(runs_dir) -> int:
    try:
        with sqlite3.connect(runs_dir / "runs.sqlite") as db:
            return db.execute("SELECT COALESCE(MAX(round), 0) FROM rounds").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_killing_the_process_mid_round_leaves_the_run_intact_and_resumable(data_dir, tmp_path):
    runs_dir = tmp_path / "runs"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "engine", "run", "--model", "cnn", "--devices", "2", "--train-samples", "4000",
               "--test-samples", "500", "--rounds", "0", "--runs-dir", str(runs_dir), "--json"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _stored_rounds(runs_dir) >= 2, timeout=180, interval=0.02)
    finally:
        process.send_signal(signal.SIGKILL)  # no chance to clean up: mid-way through round 3
        process.wait(timeout=30)
    store = RunStore(runs_dir)
    [run] = store.list_runs()
    completed = store.summary(run.run_id).rounds
    assert completed >= 2
    history = store.load_history(run.run_id)
    assert [r.round for r in history] == list(range(1, completed + 1))
    checkpoint = store.load_checkpoint(run.run_id)
    assert checkpoint.round == completed and len(checkpoint.weights) == 8
    resumed = subprocess.run(
        [sys.executable, "-m", "engine", "resume", run.run_id, "--rounds", "1", "--runs-dir", str(runs_dir), "--json"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert resumed.returncode == 0, resumed.stderr
    lines = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert lines[0]["round"] == completed + 1 and lines[-1]["rounds"] == completed + 1


def test_cli_lists_exports_metrics_and_deletes_runs(data_dir, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "engine", *args, "--runs-dir", str(tmp_path)], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    assert "no runs" in cli("runs").stdout
    run = cli("run", "--model", "mlp", "--devices", "2", "--train-samples", "1000", "--test-samples", "200",
              "--rounds", "1", "--json", "--label", "tiny")
    run_id = json.loads(run.stdout.splitlines()[-1])["run_id"]
    listing = cli("runs")
    assert run_id in listing.stdout and "finished" in listing.stdout
    assert cli("metrics", run_id).stdout.count("\n") == 2
    refused = cli("delete", run_id)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert cli("delete", run_id, "--yes").returncode == 0
    missing = cli("resume", run_id)
    assert missing.returncode == 1 and "no run" in missing.stderr
