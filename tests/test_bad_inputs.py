"""What a careless or hostile user can do, each case run as they would (the CLI in a subprocess).

Every case must end in one line saying what is wrong (an ``error:`` line, or a
``warning:`` / progress line when the command recovers), a non-zero exit when it
is an error, and never a Python traceback. The run store cases share one small
real run (MLP, 2 devices, 600 samples, 3 rounds), copied before each is damaged.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from engine.native_logs import is_noise
from tests.conftest import PROJECT_ROOT

TRACEBACK = "Traceback (most recent call last)"
SMALL_RUN = ["--model", "mlp", "--devices", "2", "--train-samples", "600", "--test-samples", "200"]


def run_module(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def assert_one_line_reason(result: subprocess.CompletedProcess, reason: str, code: int) -> None:
    """Exit ``code``, no traceback, and exactly one stderr line carrying ``reason``."""
    output = result.stdout + result.stderr
    assert TRACEBACK not in output, output
    assert result.returncode == code, output
    lines = [line for line in result.stderr.splitlines() if reason in line]
    assert len(lines) == 1, result.stderr
    if code:
        assert lines[0].startswith("error: "), lines[0]


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory, data_dir) -> tuple[Path, str]:
    """A real three-round run in its own runs folder (never damaged: cases copy it)."""
    runs = tmp_path_factory.mktemp("stored") / "runs"
    result = run_module("engine", "run", *SMALL_RUN, "--rounds", "3", "--runs-dir", runs, "--json")
    assert result.returncode == 0, result.stderr
    run_id = json.loads(result.stdout.splitlines()[-1])["run_id"]
    assert (runs / run_id / "checkpoints" / "round-00003.npz").is_file()
    return runs, run_id


@dataclass(frozen=True)
class Case:
    """A command on a (possibly damaged) copy of the stored run: ``args`` may name {runs}, {run} and {tmp}."""

    name: str
    args: tuple[str, ...]
    reason: str
    code: int = 1
    damage: Callable[[Path, str], None] = lambda runs, run_id: None
    module: str = "engine"


def write_garbage_index(runs: Path, run_id: str) -> None:
    (runs / "runs.sqlite").write_bytes(os.urandom(5000))


def truncate_index(runs: Path, run_id: str) -> None:
    for side_file in runs.glob("runs.sqlite-*"):
        side_file.unlink()
    path = runs / "runs.sqlite"
    path.write_bytes(path.read_bytes()[:3000])


def truncate_last_checkpoint(runs: Path, run_id: str) -> None:
    folder = runs / run_id / "checkpoints"
    shutil.copy(folder / "round-00003.npz", folder / "round-00006 (copy).npz")  # a stray copy, to be ignored
    path = folder / "round-00003.npz"
    path.write_bytes(path.read_bytes()[:500])


def remove_last_checkpoint(runs: Path, run_id: str) -> None:
    (runs / run_id / "checkpoints" / "round-00003.npz").unlink()


STORE_CASES = [
    Case("runs folder is a file", ("runs", "--runs-dir", "{tmp}/file"), "is a file, not a folder"),
    Case("run into a runs folder that is a file", ("run", *SMALL_RUN, "--rounds", "1", "--runs-dir", "{tmp}/file"),
         "is a file, not a folder"),
    Case("export to a file name Keras cannot write", ("export", "{run}", "--output", "{tmp}/x.bin",
                                                       "--runs-dir", "{runs}"), "must end in .keras"),
    Case("garbage run index, list", ("runs", "--runs-dir", "{runs}"), "is damaged", damage=write_garbage_index),
    Case("garbage run index, run", ("run", *SMALL_RUN, "--rounds", "1", "--runs-dir", "{runs}"), "is damaged",
         damage=write_garbage_index),
    Case("truncated run index, metrics", ("metrics", "{run}", "--runs-dir", "{runs}"), "is damaged",
         damage=truncate_index),
    Case("truncated run index, delete", ("delete", "{run}", "--yes", "--runs-dir", "{runs}"), "is damaged",
         damage=truncate_index),
    Case("metrics of an unknown run as CSV", ("metrics", "NOSUCH", "--format", "csv", "--runs-dir", "{runs}"),
         "no run 'NOSUCH'"),
    Case("metrics of an unknown run as JSON", ("metrics", "NOSUCH", "--format", "json", "--runs-dir", "{runs}"),
         "no run 'NOSUCH'"),
    Case("run id leaving the runs folder", ("delete", "../../etc", "--yes", "--runs-dir", "{runs}"), "no run"),
    Case("export of a round whose checkpoint is truncated", ("export", "{run}", "--round", "3", "--runs-dir",
         "{runs}"), "checkpoints kept: rounds 1, 2, 3", damage=truncate_last_checkpoint),
    Case("export when the last checkpoint is truncated", ("export", "{run}", "--runs-dir", "{runs}"),
         "using round 2, the newest intact checkpoint", code=0, damage=truncate_last_checkpoint),
    Case("resume when the last checkpoint is truncated, next to a stray copy",
         ("resume", "{run}", "--rounds", "1", "--runs-dir", "{runs}"), "using round 2, the newest intact checkpoint",
         code=0, damage=truncate_last_checkpoint),
    Case("export when the last checkpoint is missing", ("export", "{run}", "--runs-dir", "{runs}"),
         "no checkpoint for round 3; using round 2", code=0, damage=remove_last_checkpoint),
]


@pytest.mark.parametrize("case", STORE_CASES, ids=lambda case: case.name)
def test_run_store_and_cli_cases(case: Case, stored_run, tmp_path):
    source, run_id = stored_run
    runs = tmp_path / "runs"
    shutil.copytree(source, runs)
    (tmp_path / "file").write_text("not a folder")
    case.damage(runs, run_id)
    index_before = (runs / "runs.sqlite").read_bytes()
    args = [arg.format(runs=runs, run=run_id, tmp=tmp_path) for arg in case.args]
    result = run_module(case.module, *args)
    assert_one_line_reason(result, case.reason, case.code)
    assert not [line for line in result.stderr.splitlines() if is_noise(line.encode())]  # no absl/oneDNN chatter
    if "damaged" in case.reason:
        assert (runs / "runs.sqlite").read_bytes() == index_before  # never overwritten
    if case.args[0] == "resume":
        assert "Finished 3 rounds." in result.stdout  # round 3 trained again from round 2's model
        kept = sorted(p.name for p in (runs / run_id / "checkpoints").iterdir())
        assert "round-00003.npz" in kept  # saved again
        assert "round-00006 (copy).npz" in kept  # ignored, not pruned, not failing the run


# -- engine.predict: every image gets its own line; the exit status says whether all were classified -----------


def white_jpeg(path: Path) -> None:
    Image.new("RGB", (640, 480), "white").save(path, "JPEG")


def one_pixel(path: Path) -> None:
    Image.new("L", (1, 1), 0).save(path)


def white_ribbon(path: Path) -> None:
    Image.new("L", (30000, 8), 255).save(path)


def oversized(path: Path) -> None:
    path.write_bytes(b"\x89PNG" + bytes(25 * 2**20))


IMAGE_CASES = [  # (file name or absolute path, how to make it, the reason on its line)
    ("/dev/zero", None, "not a regular file"),
    ("huge.png", oversized, "too large"),
    ("blank_white.jpg", white_jpeg, "nothing to classify"),
    ("one_pixel.png", one_pixel, "nothing to classify"),
    ("ribbon.png", white_ribbon, "nothing to classify"),
    ("folder", lambda path: path.mkdir(), "cannot read the file"),
]


@pytest.fixture(scope="module")
def keras_model(stored_run, tmp_path_factory) -> Path:
    """The stored run's model as a .keras file (exported in-process: the CLI's export is tested above)."""
    from engine.export import export_model
    from engine.store import RunStore

    runs, run_id = stored_run
    store = RunStore(runs)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    return export_model("mlp", store.load_checkpoint(run_id).weights, "keras", path)


@pytest.fixture(scope="module")
def predicted(keras_model, tmp_path_factory) -> tuple[subprocess.CompletedProcess, list[str]]:
    """One ``engine.predict`` call on every bad image (a model load per case would cost seconds each)."""
    folder = tmp_path_factory.mktemp("images")
    names = []
    for name, make, _ in IMAGE_CASES:
        path = Path(name) if name.startswith("/") else folder / name
        if make is not None:
            make(path)
        names.append(str(path))
    return run_module("engine.predict", keras_model, *names), names


@pytest.mark.parametrize("index", range(len(IMAGE_CASES)), ids=[case[0] for case in IMAGE_CASES])
def test_bad_images_get_their_own_line_and_exit_1(predicted, index):
    result, names = predicted
    assert TRACEBACK not in result.stdout + result.stderr
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith(f"{names[index]}: error: ")]
    assert IMAGE_CASES[index][2] in line
    assert names[index] not in result.stdout  # no "T-shirt/top 19%" for what holds nothing


def saved_model(path: Path) -> None:
    path.mkdir()
    (path / "saved_model.pb").write_bytes(b"a graph that could read and write files")


@pytest.mark.parametrize(
    "name, make_model, reason",
    [
        ("saved", saved_model, "pass --allow-saved-model if you made it yourself"),
        ("model.bin", lambda path: path.write_bytes(b"PK\x03\x04 a zip"), "not a model file this command accepts"),
        ("missing.keras", lambda path: None, "model not found"),
    ],
    ids=["SavedModel without opt-in", "zip renamed .bin", "missing"],
)
def test_models_other_than_keras_and_tflite_are_refused(name, make_model, reason, tmp_path):
    model = tmp_path / name
    make_model(model)
    image = tmp_path / "shirt.png"
    Image.new("L", (40, 40), 255).save(image)
    assert_one_line_reason(run_module("engine.predict", model, image, timeout=60), reason, 2)


# -- the live run: refused deletion, and kill -9 ---------------------------------------------------------------


def runs_json(runs: Path) -> dict[str, dict]:
    result = run_module("engine", "runs", "--json", "--runs-dir", runs, timeout=30)
    assert result.returncode == 0, result.stderr
    return {entry["run_id"]: entry for entry in map(json.loads, result.stdout.splitlines())}


def test_a_training_run_cannot_be_deleted_and_after_kill_9_it_is_interrupted(data_dir, tmp_path):
    runs = tmp_path / "runs"
    process = subprocess.Popen([sys.executable, "-m", "engine", "run", *SMALL_RUN, "--rounds", "0", "--runs-dir",
                                str(runs)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        run_id = process.stdout.readline().split()[-1]  # "run <id>", printed when training starts
        deadline = time.monotonic() + 120
        while runs_json(runs)[run_id]["rounds"] < 1:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.5)
        assert runs_json(runs)[run_id]["status"] == "running"
        refused = run_module("engine", "delete", run_id, "--yes", "--runs-dir", runs, timeout=30)
        assert_one_line_reason(refused, "cannot delete it while it is being trained", 1)
        kept = run_module("engine", "delete", "--all", "--yes", "--runs-dir", runs, timeout=30)
        assert kept.returncode == 1 and f"kept run {run_id}: it is being trained" in kept.stderr
        assert (runs / run_id / "checkpoints").is_dir()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    assert runs_json(runs)[run_id]["status"] == "interrupted"
    deleted = run_module("engine", "delete", run_id, "--yes", "--runs-dir", runs, timeout=30)
    assert deleted.returncode == 0 and not (runs / run_id).exists()


# -- in-process: what the CLI and dashboard are told -----------------------------------------------------------


def test_save_failures_reach_stderr_and_the_snapshot(fashion, tmp_path, capsys):
    from engine.cli import follow
    from engine.config import FederationConfig
    from engine.federation import Federation
    from engine.store import RunStore

    store = RunStore(tmp_path / "runs")
    config = FederationConfig(model="mlp", num_devices=2, train_samples=600, test_samples=200, rounds=2)
    run_id = store.create_run(config)
    (store.run_dir(run_id) / "checkpoints").write_text("a file where the checkpoints folder belongs")
    federation = Federation(config, dataset=fashion, store=store, run_id=run_id)
    assert follow(federation, as_json=False, out=io.StringIO()) == 0
    problems = federation.snapshot().save_problems
    assert [p.split(" was not saved")[0] for p in problems] == ["Round 1", "Round 2"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: Round")]
    assert len(warnings) == 2 and "training goes on" in warnings[0]


def test_a_run_is_recorded_only_when_it_starts_training(fashion, tmp_path):
    from engine.config import FederationConfig
    from engine.federation import Federation
    from engine.store import RunStore

    store = RunStore(tmp_path / "runs")
    config = FederationConfig(model="mlp", num_devices=2, train_samples=600, test_samples=200, rounds=1)
    federation = Federation(config, dataset=fashion, store=store)
    assert store.list_runs() == [] and federation.run_id is None  # a page load or Reset records nothing
    federation.start()
    federation.wait(timeout=120)
    federation.close()
    (run,) = store.list_runs()
    assert (run.run_id, run.rounds, run.status) == (federation.run_id, 1, "finished")


@pytest.mark.parametrize("mode, size", [("I;16", (200, 300)), ("L", (30000, 8)), ("RGB", (1, 1))])
def test_what_was_read_can_always_be_previewed(mode, size):
    from data.preprocess import PREVIEW_MAX_ASPECT, PREVIEW_SIDE, preprocess_upload

    values = np.full(size[::-1], 60000 if mode == "I;16" else 255, np.uint16 if mode == "I;16" else np.uint8)
    values[size[1] // 4: size[1] // 2 + 1, size[0] // 4: size[0] // 2 + 1] //= 10
    image = Image.fromarray(values) if mode != "RGB" else Image.new("RGB", size, "white")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    result = preprocess_upload(buffer.getvalue())
    preview = result.preview
    assert preview.mode == "RGB" and max(preview.size) <= PREVIEW_SIDE
    assert max(preview.size) <= PREVIEW_MAX_ASPECT * min(preview.size) or max(preview.size) == 1
    assert result.original_size == size
    assert result.blank is (mode == "RGB")
