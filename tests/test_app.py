"""Tests of the Streamlit dashboard: the app through AppTest, plus its pure helpers (charts, prediction, defaults).

The app is driven with small federations (4 MLP devices, 1,000 training samples)
chosen through the FL_DEFAULT_* variables it reads. The data comes from
$FL_DATA_DIR (default: ../shared/datasets next to the project); the AppTest
part is skipped when that folder has no Fashion-MNIST files.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # plain `pytest` does not put the project root on the path
    sys.path.insert(0, str(PROJECT_ROOT))

from data.datasets import DatasetUnavailableError, find_local_folder, load_dataset
from data.preprocess import ImageError, preprocess_upload, render_on_background
from engine.results import DeviceProblem, DeviceRoundResult, DeviceState, DeviceStatus, RoundResult, RunStatus, Snapshot

from app import charts
from app.controls_view import available_actions, format_elapsed, phase, progress_text, rounds_text
from app.devices_view import changed_activity, device_table
from app.state import SessionFederations
from app.defaults import auto_create, default_config, refresh_seconds
from app.predict import classify_pixels, classify_upload, enlarge, pixels_of_test_image
from app.sidebar import same_setup

APP_FILE = str(PROJECT_ROOT / "app" / "main.py")
DATA_DIR = os.environ.get("FL_DATA_DIR") or str((PROJECT_ROOT / ".." / "shared" / "datasets").resolve())
HAVE_DATA = find_local_folder("fashion-mnist", DATA_DIR) is not None
APP_ENV = {
    "FL_DATA_DIR": DATA_DIR,
    "FL_DEFAULT_DEVICES": "4",
    "FL_DEFAULT_MODEL": "mlp",
    "FL_DEFAULT_TRAIN_SAMPLES": "1000",
    "FL_DEFAULT_TEST_SAMPLES": "500",
    "FL_DEFAULT_ROUNDS": "2",
    "FL_AUTO_CREATE": "1",
}
POLL_TIMEOUT = 45.0
CLASS_NAMES = tuple(f"class {i}" for i in range(3))

needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"no Fashion-MNIST IDX files under {DATA_DIR}")


# -- hand-made engine records for the pure helpers --------------------------------------------------------------
def make(record_type, **values):
    """A record with the given fields; any other required field (the engine grows new ones) gets 0."""
    for field in dataclasses.fields(record_type):
        if field.name not in values and field.default is dataclasses.MISSING \
                and field.default_factory is dataclasses.MISSING:
            values[field.name] = 0
    return record_type(**values)


def device_result(device_id: int, accuracy: float) -> DeviceRoundResult:
    return make(DeviceRoundResult, device_id=device_id, samples=100, accuracy=accuracy, loss=0.6)


def round_result(number: int, accuracies: dict[int, float], problems=(), confusion=None) -> RoundResult:
    return make(
        RoundResult, round=number, global_loss=1.0 / number, global_accuracy=0.5 + number / 100,
        selected=tuple(sorted(accuracies) + [p.device_id for p in problems]),
        devices=tuple(device_result(d, a) for d, a in accuracies.items()), problems=tuple(problems),
        confusion=np.eye(3, dtype=int) if confusion is None else confusion,
    )


def snapshot(status: RunStatus, done: int = 0, total: int | None = 5, history=()) -> Snapshot:
    devices = tuple(make(DeviceState, device_id=i, active=True, status=DeviceStatus.IDLE, samples=10) for i in range(3))
    return make(Snapshot, status=status, message="", round=done, total_rounds=total, devices=devices,
                history=tuple(history))


def fake_predict(images: np.ndarray) -> np.ndarray:
    """Probabilities that favour class 2, shaped like the engine's output."""
    assert images.dtype == np.float32 and images.shape[1:] == (28, 28)
    return np.tile(np.array([0.1, 0.2, 0.7], dtype=np.float32), (len(images), 1))


def jpeg_of_test_image(dataset, index: int) -> bytes:
    buffer = io.BytesIO()
    render_on_background(dataset.x_test[index], scale=12).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


# -- charts -------------------------------------------------------------------------------------------------------
def test_device_series_leave_gaps_for_rounds_a_device_sat_out():
    history = [round_result(1, {0: 0.5, 1: 0.6}), round_result(2, {1: 0.7}), round_result(3, {0: 0.8, 2: 0.9})]
    assert charts.device_accuracy_series(history) == {
        0: [0.5, None, 0.8],
        1: [0.6, 0.7, None],
        2: [None, None, 0.9],
    }


def test_device_series_turn_non_finite_accuracy_into_gaps():
    assert charts.device_accuracy_series([round_result(1, {0: float("nan")})]) == {0: [None]}


def test_device_accuracy_figure_has_one_unconnected_line_per_device():
    history = [round_result(1, {0: 0.5, 1: 0.6}), round_result(2, {1: 0.7})]
    figure = charts.device_accuracy_figure(history)
    assert [trace.name for trace in figure.data] == ["Device 0", "Device 1"]
    device0 = figure.data[0]
    assert list(device0.x) == [1, 2] and list(device0.y) == [0.5, None]
    assert device0.connectgaps is False
    assert figure.layout.uirevision == charts.UI_REVISION  # legend clicks survive live updates


def test_global_metrics_figure_plots_accuracy_and_loss_per_round():
    history = [round_result(1, {0: 0.5}), round_result(2, {0: 0.6})]
    accuracy, loss = charts.global_metrics_figure(history).data
    assert list(accuracy.x) == [1, 2] and list(accuracy.y) == [0.51, 0.52]
    assert list(loss.y) == [1.0, 0.5]


def test_latest_round_bars_show_only_contributing_devices():
    result = round_result(4, {2: 0.9, 0: 0.4}, problems=[DeviceProblem(1, "failed", "boom")])
    figure = charts.latest_device_accuracy_figure(result)
    assert list(figure.data[0].x) == ["Device 0", "Device 2"]
    assert list(figure.data[0].y) == [0.4, 0.9]
    assert "Round 4" in figure.layout.title.text
    assert charts.latest_device_accuracy_figure(None).data == ()


def test_per_class_accuracy_is_recall_and_none_for_absent_classes():
    confusion = np.array([[3, 1, 0], [0, 0, 0], [1, 1, 2]])
    assert charts.per_class_accuracy(confusion) == [0.75, None, 0.5]
    figure = charts.per_class_accuracy_figure(confusion, CLASS_NAMES)
    assert list(figure.data[0].text) == ["75%", "n/a", "50%"]


def test_confusion_and_label_figures_keep_the_matrix_shape():
    confusion = np.arange(9).reshape(3, 3)
    figure = charts.confusion_figure(confusion, CLASS_NAMES, round_number=7)
    assert np.array_equal(np.asarray(figure.data[0].z), confusion)
    assert "round 7" in figure.layout.title.text
    histogram = np.array([[5, 0, 1], [0, 4, 4]])
    heatmap = charts.label_distribution_figure(histogram, CLASS_NAMES).data[0]
    assert list(heatmap.y) == ["Device 0", "Device 1"] and list(heatmap.x) == list(CLASS_NAMES)


def test_probabilities_figure_highlights_the_predicted_class():
    figure = charts.probabilities_figure(np.array([0.1, 0.7, 0.2]), CLASS_NAMES, untrained=True)
    colours = list(figure.data[0].marker.color)
    assert colours[1] == charts.HIGHLIGHT_COLOUR and colours.count(charts.HIGHLIGHT_COLOUR) == 1
    assert "untrained" in figure.layout.title.text


# -- prediction helpers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [b"", b"definitely not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64],
    ids=["empty", "text", "truncated-png"],
)
def test_bad_uploads_become_the_preprocessors_message(data):
    with pytest.raises(ImageError) as raised:
        preprocess_upload(data)
    outcome = classify_upload(data, fake_predict, CLASS_NAMES)
    assert outcome.classification is None
    assert outcome.error == str(raised.value) and outcome.error


def test_good_upload_is_classified():
    picture = np.zeros((28, 28), np.uint8)
    picture[6:22, 10:18] = 220
    buffer = io.BytesIO()
    render_on_background(picture, scale=8).save(buffer, format="PNG")
    outcome = classify_upload(buffer.getvalue(), fake_predict, CLASS_NAMES)
    assert outcome.error is None and outcome.inverted
    result = outcome.classification
    assert result.pixels.shape == (28, 28) and result.name == "class 2" and result.confidence == pytest.approx(0.7)


def test_test_images_are_scaled_and_enlarged_without_smoothing():
    x_test = np.array([np.eye(28, dtype=np.uint8) * 255])
    pixels = pixels_of_test_image(x_test, 0)
    assert pixels.dtype == np.float32 and pixels.max() == 1.0
    assert classify_pixels(pixels, fake_predict, CLASS_NAMES).index == 2
    image = enlarge(pixels, scale=5)
    assert image.size == (140, 140) and set(np.unique(np.asarray(image))) == {0, 255}


# -- defaults and control logic -------------------------------------------------------------------------------------
def test_env_defaults_override_the_engine_defaults():
    config, warnings = default_config({"FL_DEFAULT_DEVICES": "4", "FL_DEFAULT_ROUNDS": "0",
                                       "FL_DEFAULT_MODEL": "mlp", "FL_DEFAULT_TRAIN_SAMPLES": "2000"})
    assert (config.num_devices, config.rounds, config.model, config.train_samples) == (4, None, "mlp", 2000)
    assert warnings == []
    _, warnings = default_config({"FL_DEFAULT_DEVICES": "many", "FL_DEFAULT_MIN_DEVICES": "50"})
    assert any("FL_DEFAULT_DEVICES" in w for w in warnings)
    assert any("minimum devices" in w for w in warnings)
    assert refresh_seconds({}) == pytest.approx(0.7) and refresh_seconds({"FL_REFRESH_SECONDS": "0"}) == 0.2
    assert auto_create({}) and not auto_create({"FL_AUTO_CREATE": "0"})


def test_setup_comparison_ignores_rounds_only():
    base, _ = default_config({})
    assert same_setup(base, base.with_changes(rounds=None))
    assert not same_setup(base, base.with_changes(num_devices=3))


def test_control_buttons_follow_the_run_status():
    ready = available_actions(snapshot(RunStatus.READY))
    assert ready.start and not ready.pause and not ready.resume and not ready.stop
    running = available_actions(snapshot(RunStatus.RUNNING, 1))
    assert not running.start and running.pause and running.stop
    assert available_actions(snapshot(RunStatus.PAUSED, 1)).resume
    assert available_actions(snapshot(RunStatus.WAITING, 1)).pause
    assert not available_actions(snapshot(RunStatus.FINISHED, 5, 5)).start  # raise the rounds to continue
    assert available_actions(snapshot(RunStatus.STOPPED, 2, None)).start
    assert [phase(snapshot(s)) for s in (RunStatus.READY, RunStatus.WAITING, RunStatus.PAUSED)] == \
        ["idle", "running", "paused"]
    assert rounds_text(snapshot(RunStatus.RUNNING, 3, None)) == "3 / ∞"
    assert format_elapsed(3725) == "1:02:05" and format_elapsed(65.9) == "1:05"


def test_progress_text_says_what_the_round_is_doing():
    running = dataclasses.replace(snapshot(RunStatus.RUNNING, 2), round_progress=0.5)
    assert progress_text(running) == "Round 3: local training 50% done"
    assert "averages their updates" in progress_text(dataclasses.replace(running, round_progress=1.0))


def test_device_table_edits_become_activity_changes():
    state = dataclasses.replace(
        snapshot(RunStatus.RUNNING),
        devices=tuple(make(DeviceState, device_id=i, active=i != 1, status=DeviceStatus.IDLE, samples=5)
                      for i in range(3)),
    )
    table = device_table(state)
    assert list(table["device"]) == [0, 1, 2] and list(table["active"]) == [True, False, True]
    assert changed_activity(table, state) == {}
    table.loc[0, "active"], table.loc[1, "active"] = False, True
    assert changed_activity(table, state) == {0: False, 1: True}


def test_a_sessions_federations_are_stopped_together():
    class FakeFederation:
        def __init__(self):
            self.stops = []

        def stop(self, wait=True, timeout=None):
            self.stops.append(wait)

    first, second = FakeFederation(), FakeFederation()
    federations = SessionFederations()
    federations.add(first)
    federations.add(second)
    federations.discard(first)  # already closed by a reset
    federations.stop_all()
    assert (first.stops, second.stops) == ([], [False])  # never blocks Streamlit's disconnect handling


# -- the app ------------------------------------------------------------------------------------------------------
@pytest.fixture
def app_env(monkeypatch):
    for name, value in APP_ENV.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


@pytest.fixture
def make_app(app_env):
    """AppTest factory; every federation an app created is closed afterwards."""
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    config.set_option("server.address", "localhost")  # as app/.streamlit/config.toml sets it (AppTest reads none)
    apps = []

    def make():
        # a limit for one script run, not a claim: a rerun that builds a federation or starts Flower's processes
        # took over 60 s on a loaded 2-core machine (two xdist workers plus other work); a hang still fails
        at = AppTest.from_file(APP_FILE, default_timeout=240)
        apps.append(at)
        return at

    yield make
    for at in apps:
        federation = at.session_state["federation"] if "federation" in at.session_state else None
        if federation is not None:
            federation.close()


def federation_of(at):
    return at.session_state["federation"]


def no_exceptions(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def plotly_keys(at) -> set[str]:
    return {element.key for element in at.get("plotly_chart")}


def plotly_spec(at, key: str) -> dict:
    return json.loads(next(e.proto.spec for e in at.get("plotly_chart") if e.key == key))


def plotted(values) -> np.ndarray:
    """Values from a figure's JSON: a plain list, or Plotly's base64 typed array ({"dtype", "bdata"})."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"]))
    return np.asarray(values)


def run_until(at, condition, timeout: float = POLL_TIMEOUT) -> None:
    """Re-run the script until ``condition(snapshot)`` holds, as the live refresh would."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        at.run()
        no_exceptions(at)
        if condition(federation_of(at).snapshot()):
            return
        time.sleep(0.2)
    pytest.fail(f"condition not reached in {timeout} s; last snapshot: {federation_of(at).snapshot().message}")


@needs_data
def test_first_load_creates_a_federation_from_the_defaults(make_app):
    at = make_app().run()
    no_exceptions(at)
    federation = federation_of(at)
    assert (federation.config.num_devices, federation.config.model) == (4, "mlp")
    assert [t.key for t in at.toggle] == ["active_0", "active_1", "active_2", "active_3"]
    assert all(t.value for t in at.toggle)
    assert metric(at, "Status") == "Ready"
    assert "label_distribution" in plotly_keys(at)
    assert any("untrained" in w.value for w in at.warning)
    assert at.button(key="apply").disabled  # nothing to apply: the federation matches the setup


@needs_data
def test_invalid_setup_is_explained_in_place(make_app, app_env):
    app_env.setenv("FL_AUTO_CREATE", "0")
    at = make_app().run()
    assert "federation" not in at.session_state
    assert any("Create federation" in i.value for i in at.info)
    at.number_input(key="setup_min_devices").set_value(9).run()
    at.number_input(key="setup_learning_rate").set_value(0.0).run()
    no_exceptions(at)
    errors = " ".join(e.value for e in at.error)
    assert "Minimum devices per round must be between 1 and the number of devices (4)" in errors
    assert "Learning rate must be > 0" in errors
    assert at.button(key="apply").disabled
    at.number_input(key="setup_min_devices").set_value(2).run()
    at.number_input(key="setup_learning_rate").set_value(0.002).run()
    assert not at.error and not at.button(key="apply").disabled
    at.button(key="apply").click().run()
    no_exceptions(at)
    assert federation_of(at).config.min_devices == 2


@needs_data
def test_build_failures_are_explained_and_keep_the_old_federation(make_app, monkeypatch, tmp_path):
    at = make_app().run()
    old = federation_of(at)

    def unavailable(name, data_dir=None, options=None, progress=None):
        raise DatasetUnavailableError(f"Could not load {name}: no local copy and no internet.")

    monkeypatch.setattr("app.state.load_source", unavailable)  # a new data folder means a fresh load
    at.text_input(key="setup_data_dir").set_value(str(tmp_path)).run()
    at.button(key="apply").click().run()
    no_exceptions(at)
    assert "Could not load fashion-mnist: no local copy and no internet." in [e.value for e in at.error]
    assert federation_of(at) is old and at.toggle  # the page keeps working with the previous federation

    class Unbuildable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("out of memory")

    at.text_input(key="setup_data_dir").set_value(DATA_DIR).run()
    at.number_input(key="setup_devices").set_value(3).run()
    monkeypatch.setattr("engine.federation.Federation", Unbuildable)
    at.button(key="apply").click().run()
    no_exceptions(at)
    assert "Could not create the federation: RuntimeError: out of memory" in [e.value for e in at.error]
    assert federation_of(at) is old


@needs_data
def test_toggles_and_bulk_actions_change_device_activity(make_app):
    at = make_app().run()
    at.toggle(key="active_1").set_value(False).run()
    no_exceptions(at)
    device = federation_of(at).snapshot().devices[1]
    assert not device.active and device.status is DeviceStatus.INACTIVE
    assert not at.toggle(key="active_1").value
    assert "3 of 4 devices active" in " ".join(c.value for c in at.caption)

    at.button(key="deactivate_all").click().run()
    assert not any(d.active for d in federation_of(at).snapshot().devices)
    assert not any(t.value for t in at.toggle)
    at.button(key="start").click()
    run_until(at, lambda s: s.status is RunStatus.WAITING)
    at.run()  # the run that saw WAITING may have drawn the status just before it changed
    assert any("Waiting for devices: 0 active" in w.value for w in at.warning)
    at.button(key="activate_all").click().run()
    assert all(t.value for t in at.toggle)
    run_until(at, lambda s: s.round >= 1)


@needs_data
def test_training_runs_live_and_stops(make_app):
    at = make_app().run()
    at.checkbox(key="setup_until_stopped").check().run()  # rounds may change without a reset
    assert federation_of(at).snapshot().total_rounds is None
    at.button(key="start").click().run()
    no_exceptions(at)
    assert at.button(key="pause").disabled is False and at.button(key="start").disabled
    run_until(at, lambda s: s.round >= 2)
    at.run()  # the run that saw round 2 may have drawn its charts just before; this one starts after it
    keys = plotly_keys(at)
    assert {"global_metrics", "device_accuracy", "latest_device_accuracy", "confusion", "per_class"} <= keys
    rounds_plotted = plotted(plotly_spec(at, "global_metrics")["data"][0]["x"])
    assert list(rounds_plotted[:2]) == [1, 2]
    assert metric(at, "Completed rounds").endswith("/ ∞")

    at.button(key="pause").click().run()
    assert federation_of(at).snapshot().status is RunStatus.PAUSED and metric(at, "Status") == "Paused"
    at.button(key="resume").click().run()
    at.button(key="stop").click().run()
    no_exceptions(at)
    assert federation_of(at).snapshot().status is RunStatus.STOPPED
    assert metric(at, "Status") == "Stopped"
    assert not at.button(key="start").disabled and at.button(key="stop").disabled

    # A run exists: a changed setup asks for a reset, and Reset applies it.
    at.number_input(key="setup_devices").set_value(3).run()
    assert at.button(key="apply").disabled
    assert any("Reset" in w.value for w in at.sidebar.warning)
    at.button(key="reset").click().run()
    no_exceptions(at)
    assert federation_of(at).config.num_devices == 3 and federation_of(at).snapshot().round == 0


@needs_data
def test_many_devices_get_a_table_with_an_active_column(make_app, app_env):
    app_env.setenv("FL_DEFAULT_DEVICES", "30")
    at = make_app().run()
    no_exceptions(at)
    assert not at.toggle and len(at.data_editor) == 1
    table = at.data_editor[0].value
    assert list(table.columns[:2]) == ["device", "active"] and len(table) == 30
    at.session_state["device_table_0"] = {"edited_rows": {5: {"active": False}}, "added_rows": [], "deleted_rows": []}
    at.run()
    no_exceptions(at)
    assert not federation_of(at).snapshot().devices[5].active
    assert at.data_editor[0].key == "device_table_1"  # a fresh editor shows the engine's state
    assert not at.data_editor[0].value.loc[5, "active"]
    assert "29 of 30 devices active" in " ".join(c.value for c in at.caption)


@needs_data
def test_a_crashing_device_is_reported(make_app):
    at = make_app().run()
    at.multiselect(key="setup_crash").set_value([2]).run()
    at.button(key="apply").click().run()
    assert federation_of(at).config.faults == {2: "crash"}
    at.button(key="start").click()
    run_until(at, lambda s: not s.is_live and s.round >= 1)
    warnings = " ".join(w.value for w in at.warning)
    assert "device 2 failed" in warnings


@needs_data
def test_uploaded_and_random_test_images_are_classified(make_app):
    at = make_app().run()
    federation = federation_of(at)
    dataset = load_dataset("fashion-mnist", DATA_DIR)
    at.file_uploader(key="upload").set_value(("boot.jpg", jpeg_of_test_image(dataset, 0), "image/jpeg")).run()
    no_exceptions(at)
    headline = " ".join(m.value for m in at.markdown)
    assert "Untrained model's guess:" in headline  # no round yet, and it says so
    assert any(name in headline for name in federation.dataset.class_names)
    assert "probabilities-upload" in plotly_keys(at)
    assert plotly_spec(at, "probabilities-upload")["data"][0]["y"] == list(federation.dataset.class_names)

    at.file_uploader(key="upload").set_value(("broken.png", b"not really a png", "image/png")).run()
    no_exceptions(at)
    with pytest.raises(ImageError) as raised:
        preprocess_upload(b"not really a png")
    assert str(raised.value) in [e.value for e in at.error]

    at.button(key="random_test_image").click().run()
    no_exceptions(at)
    index = at.session_state["test_image_index"]
    true_name = dataset.class_names[int(dataset.y_test[index])]
    assert any(f"True label: **{true_name}**" in m.value for m in at.markdown)
    assert "probabilities-test" in plotly_keys(at)
