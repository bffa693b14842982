"""The headless CLI, run as a user runs it: ``python -m engine ...`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


SMALL = ["--model", "mlp", "--devices", "3", "--train-samples", "1500", "--test-samples", "500", "--rounds", "2"]


def test_json_output_has_one_object_per_round_and_a_summary(data_dir):
    result = run_cli("run", *SMALL, "--json", "--eval-samples", "200")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    rounds, summary = lines[:-1], lines[-1]
    assert [r["round"] for r in rounds] == [1, 2]
    assert [r["test_samples"] for r in rounds] == [200, 500]  # a sample each round, the whole test set last
    for record in rounds:
        assert {"global_accuracy", "global_loss", "seconds", "devices"} <= set(record)
        assert [d["id"] for d in record["devices"]] == [0, 1, 2]
        assert all({"samples", "accuracy", "loss"} <= set(d) for d in record["devices"])
    assert summary["summary"] is True and summary["rounds"] == 2 and summary["status"] == "finished"
    assert summary["final_accuracy"] == rounds[-1]["global_accuracy"] > 0.4


def test_table_output_and_fault_reporting(data_dir):
    result = run_cli("run", *SMALL, "--fault", "1=crash", "--precision", "auto")
    assert result.returncode == 0, result.stderr
    assert "Training in " in result.stderr  # the precision the devices train in, and why
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run ")  # the id under which the run was recorded
    lines = lines[1:]
    assert lines[0].split()[:3] == ["round", "accuracy", "loss"]
    assert lines[1].split()[0] == "1" and lines[2].split()[0] == "2"
    assert "#1 failed" in lines[1]
    assert "Finished 2 rounds" in lines[-1]
    assert "Devices train vectorised, up to 4 per stack" in result.stderr


def test_help_explains_every_option():
    result = run_cli("run", "--help")
    assert result.returncode == 0
    for option in ("--dataset", "--model", "--devices", "--partition", "--alpha", "--shards-per-device",
                   "--rounds", "--local-epochs", "--batch-size", "--lr", "--seed", "--json", "--min-devices",
                   "--fraction", "--optimizer"):
        assert option in result.stdout
    text = " ".join(result.stdout.split())
    assert "default: adam" in text and "default: 0.002" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--partition", "zigzag"], "must be one of iid, dirichlet"),
        (["--devices", "0"], "Number of devices must be >= 1"),
        (["--devices", "3", "--min-devices", "5"], "minimum devices"),
        (["--partition", "dirichlet", "--alpha", "-1"], "alpha must be > 0"),
        (["--fraction", "1.5"], "must be in (0, 1]"),
        (["--fault", "x"], "DEVICE=FAULT"),
        (["--lr", "abc"], "expected a number"),
        (["--precision", "half"], "half"),
        (["--eval-samples", "-1"], "must be"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(args, message):
    result = run_cli("run", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_data_says_what_to_do(tmp_path, monkeypatch):
    # No local copy, and a download that cannot succeed (a dead proxy, online or off).
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    result = run_cli("run", "--data-dir", str(tmp_path), "--rounds", "1", timeout=120)
    assert result.returncode == 1
    assert "FL_DATA_DIR" in result.stderr and "connect to the internet" in result.stderr
    assert "Traceback" not in result.stderr


def test_dirichlet_run_learns_and_devices_differ(data_dir):
    result = run_cli(
        "run", "--model", "mlp", "--devices", "6", "--partition", "dirichlet", "--alpha", "0.5",
        "--train-samples", "6000", "--test-samples", "2000", "--rounds", "3", "--json",
    )
    assert result.returncode == 0, result.stderr
    rounds = [json.loads(line) for line in result.stdout.splitlines()][:-1]
    assert rounds[-1]["global_accuracy"] > 0.4
    device_accuracies = [d["accuracy"] for d in rounds[-1]["devices"]]
    assert max(device_accuracies) - min(device_accuracies) > 0.05
    assert len({d["samples"] for d in rounds[-1]["devices"]}) > 1
