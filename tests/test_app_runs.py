"""Dashboard tests for strategies/privacy setup, recorded runs, a thousand devices, and the new chart helpers."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from conftest import run_to_finish, wait_until

from engine.results import DeviceProblem, RoundResult
from tests.test_app import (APP_ENV, DATA_DIR, HAVE_DATA, make, make_app, app_env, federation_of,  # noqa: F401
                            needs_data, no_exceptions, plotly_keys, plotly_spec, round_result)

from app import charts
from app.devices_view import filter_devices, page_of
from app.runs import run_label, runs_table
from app.setup_helpers import faults_for, pick_devices, slowdowns_for, strategy_values, widget_values


def with_traffic(result: RoundResult, down: int, up: int, raw: int, epsilon=None) -> RoundResult:
    return RoundResult(**{**{f: getattr(result, f) for f in result.__dataclass_fields__},
                          "bytes_down": down, "bytes_up": up, "raw_bytes_up": raw, "epsilon": epsilon})


# -- pure helpers ---------------------------------------------------------------------------------------------------
def test_bytes_series_and_figure_show_per_round_cumulative_and_ratio():
    history = [with_traffic(round_result(1, {0: 0.5}), 100, 25, 100), with_traffic(round_result(2, {0: 0.6}), 100, 50, 100)]
    series = charts.bytes_series(history)
    assert series["cumulative_up"] == [25, 75] and series["cumulative_down"] == [100, 200]
    assert series["compression_ratio"] == [4.0, 2.0]
    figure = charts.bytes_figure(history)
    assert len(figure.data) == 4 and "2.0×" in figure.layout.title.text
    assert list(figure.data[1].y) == [25, 75]


def test_privacy_figure_puts_epsilon_next_to_accuracy():
    history = [with_traffic(round_result(r, {0: 0.5}), 1, 1, 1, epsilon=0.5 * r) for r in (1, 2)]
    accuracy, epsilon = charts.privacy_figure(history).data
    assert list(epsilon.y) == [0.5, 1.0] and epsilon.yaxis == "y2"
    assert list(accuracy.y) == [0.51, 0.52]
    assert charts.has_privacy(history) and not charts.has_privacy([round_result(1, {0: 0.5})])


def test_problems_table_lists_the_latest_rounds_newest_first():
    history = [round_result(r, {0: 0.5}, problems=[DeviceProblem(3, "dropped out", "no answer")]) for r in range(1, 8)]
    rows = charts.problems_table(history, last_rounds=2)
    assert rows == [{"round": 7, "device": 3, "what": "dropped out", "why": "no answer"},
                    {"round": 6, "device": 3, "what": "dropped out", "why": "no answer"}]
    assert charts.problems_table([round_result(1, {0: 0.5})]) == []


def test_overlay_has_one_line_per_run_and_device_charts_take_a_subset():
    runs = {"a": [round_result(1, {0: 0.5})], "b": [round_result(1, {0: 0.5}), round_result(2, {0: 0.5})]}
    assert [t.name for t in charts.accuracy_overlay_figure(runs).data] == ["a", "b"]
    history = [round_result(1, {d: 0.5 for d in range(40)})]
    assert len(charts.device_accuracy_figure(history, devices=[1, 2, 99]).data) == 2
    assert list(charts.latest_device_accuracy_figure(history[0], devices=[3]).data[0].x) == ["Device 3"]


def test_big_label_histograms_are_grouped():
    histogram = np.ones((1000, 10), dtype=int)
    counts, labels = charts.aggregate_histogram(histogram, max_rows=30)
    assert counts.shape == (30, 10) and counts.sum() == 10_000
    assert labels[0].startswith("Devices 0–") and labels[-1].endswith("–999")
    assert len(charts.label_distribution_figure(histogram, [str(i) for i in range(10)]).data[0].y) == 30
    small, names = charts.aggregate_histogram(np.ones((4, 3)))
    assert small.shape == (4, 3) and names[0] == "Device 0"


def test_slow_and_malicious_devices_are_chosen_reproducibly():
    assert pick_devices(10, 3) == [0, 1, 2]
    random_pick = pick_devices(100, 5, "random", seed=1)
    assert random_pick == pick_devices(100, 5, "random", seed=1) and len(set(random_pick)) == 5
    assert slowdowns_for(5, 2, 3.0) == {0: 3.0, 1: 3.0} and slowdowns_for(5, 2, 1.0) == {}
    assert faults_for(5, 2, "scale") == {3: "scale", 4: "scale"} and faults_for(5, 0, "nan") == {}
    assert strategy_values({"mu": 0.01, "b": 1.0}, {"mu": 0.05, "b": 1.0}) == {"mu": 0.05}


def test_device_search_and_pages():
    table = pd.DataFrame({"device": range(120), "active": True, "status": ["idle"] * 119 + ["failed"],
                          "samples": 1, "detail": ""})
    assert list(filter_devices(table, "7")["device"]) == [7]
    assert len(filter_devices(table, "10-59")) == 50
    assert list(filter_devices(table, "FAIL")["device"]) == [119]
    assert list(page_of(table, 3)["device"]) == list(range(100, 120))
    assert len(page_of(table, 99)) == 20  # clamped to the last page


def test_runs_table_and_widget_values():
    from engine.config import FederationConfig

    config = FederationConfig(strategy="fedprox", strategy_params={"proximal_mu": 0.1}, clip_norm=1.0,
                              noise_multiplier=0.5, faults={4: "scale", 0: "nan"}, slowdowns={0: 2.0, 1: 2.0},
                              num_devices=5)
    values = widget_values(config, {"proximal_mu": 0.01})
    assert values["setup_fedprox_proximal_mu"] == 0.1 and values["setup_dp"] and values["setup_clip"] == 1.0
    assert values["setup_nan"] == [0] and values["setup_bad_count"] == 1 and values["setup_slow_mode"] == "first"
    assert "fedprox" in run_label(config) and "DP" in run_label(config)
    assert list(runs_table([]).columns)[:4] == ["run", "id", "date", "label"]


# -- the app ------------------------------------------------------------------------------------------------------
@needs_data
def test_strategy_and_privacy_setup(make_app, app_env):
    app_env.setenv("FL_AUTO_CREATE", "0")
    at = make_app().run()
    at.selectbox(key="setup_strategy").set_value("fedmedian").run()
    at.checkbox(key="setup_secure").check().run()
    no_exceptions(at)
    assert any("secure aggregation only reveals the sum" in e.value.lower() for e in at.sidebar.error)
    assert at.button(key="apply").disabled
    assert any("simulated" in c.value.lower() and "shared secret" in c.value for c in at.sidebar.caption)

    at.selectbox(key="setup_strategy").set_value("fedprox").run()
    assert [n.key for n in at.sidebar.number_input if n.key.startswith("setup_fedprox_")] == ["setup_fedprox_proximal_mu"]
    at.number_input(key="setup_fedprox_proximal_mu").set_value(0.05)
    at.checkbox(key="setup_dp").check().run()
    at.number_input(key="setup_clip").set_value(1.5)
    at.number_input(key="setup_noise").set_value(0.3)
    at.selectbox(key="setup_compression").set_value("topk").run()
    at.number_input(key="setup_topk").set_value(0.05)
    at.slider(key="setup_dropout").set_value(0.2)
    at.checkbox(key="setup_use_deadline").check()
    at.number_input(key="setup_slow_count").set_value(2)
    at.number_input(key="setup_bad_count").set_value(1)
    at.selectbox(key="setup_bad_kind").set_value("scale").run()
    no_exceptions(at)
    assert not at.sidebar.error
    at.button(key="apply").click().run()
    no_exceptions(at)
    config = federation_of(at).config
    assert (config.strategy, config.strategy_params) == ("fedprox", {"proximal_mu": 0.05})
    assert (config.clip_norm, config.noise_multiplier, config.secure_aggregation) == (1.5, 0.3, True)
    assert (config.compression, config.topk_fraction, config.dropout) == ("topk", 0.05, 0.2)
    assert config.round_deadline == 5.0 and config.slowdowns == {0: 4.0, 1: 4.0} and config.faults == {3: "scale"}


@pytest.fixture
def recorded_runs(monkeypatch, tmp_path, fashion):
    """Two finished one-round runs in a fresh FL_RUNS_DIR."""
    from conftest import wait_until
    from engine.config import FederationConfig
    from engine.federation import Federation
    from engine.store import RunStore

    monkeypatch.setenv("FL_RUNS_DIR", str(tmp_path / "runs"))
    store = RunStore(tmp_path / "runs")
    ids = []
    for strategy in ("fedavg", "fedavgm"):
        config = FederationConfig(model="mlp", num_devices=3, train_samples=600, test_samples=200, rounds=1,
                                  strategy=strategy, data_dir=DATA_DIR)
        federation = Federation(config, dataset=fashion, store=store, label=f"tiny {strategy}")
        federation.start()
        wait_until(lambda: federation.snapshot().round >= 1 and not federation.snapshot().is_live)
        federation.close()
        ids.append(federation.run_id)
    return ids


@needs_data
def test_runs_page_lists_opens_compares_downloads_and_deletes(make_app, app_env, recorded_runs):
    first, second = recorded_runs
    app_env.setenv("FL_AUTO_CREATE", "0")
    at = make_app().run()
    at.radio(key="page").set_value("Runs").run()
    no_exceptions(at)
    table = at.dataframe[0].value
    assert set(table["run"]) == {first, second} and set(table["strategy"]) == {"fedavg", "fedavgm"}

    at.multiselect(key="runs_compare").set_value([first, second]).run()
    no_exceptions(at)
    assert len(plotly_spec(at, "runs_overlay")["data"]) == 2

    at.selectbox(key="runs_open").set_value(first).run()
    no_exceptions(at)
    assert {"run_global_metrics", "run_device_accuracy", "run_bytes"} <= plotly_keys(at)
    downloads = {e.proto.label for e in at.get("download_button")}
    assert {"Download CSV", "Download JSON"} <= downloads

    at.button(key="runs_export").click().run()  # Keras, the latest checkpoint
    no_exceptions(at)
    assert not at.error, [e.value for e in at.error]
    assert any(label.startswith("Download mlp-") and label.endswith(".keras")
               for label in (e.proto.label for e in at.get("download_button")))

    at.button(key="runs_delete").click().run()
    assert any("cannot be undone" in w.value for w in at.warning)
    at.button(key="runs_cancel").click().run()
    assert len(at.dataframe[0].value) == 2
    at.button(key="runs_delete").click().run()
    at.button(key="runs_confirm").click().run()
    no_exceptions(at)
    assert list(at.dataframe[0].value["run"]) == [second]


@pytest.fixture
def streamlit_warnings(monkeypatch) -> list[str]:
    """Warnings Streamlit logs (its loggers do not propagate, so caplog sees none of them)."""
    import logging

    from streamlit.elements.lib import policies

    monkeypatch.setattr(policies, "_shown_default_value_warning", False)  # Streamlit warns once per process
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    names = ["streamlit"] + [n for n in logging.root.manager.loggerDict if n.startswith("streamlit.")]
    for name in names:
        logging.getLogger(name).addHandler(handler)
    yield messages
    for name in names:
        logging.getLogger(name).removeHandler(handler)


@needs_data
def test_a_recorded_run_resumes_as_the_live_federation(make_app, app_env, recorded_runs, streamlit_warnings):
    app_env.setenv("FL_AUTO_CREATE", "0")
    at = make_app().run()
    at.radio(key="page").set_value("Runs").run()
    at.selectbox(key="runs_open").set_value(recorded_runs[1]).run()
    at.number_input(key="runs_more_rounds").set_value(2).run()
    at.button(key="runs_resume").click().run()
    no_exceptions(at)
    assert not [m for m in streamlit_warnings if "Session State API" in m], streamlit_warnings
    assert at.number_input(key="setup_train_samples").value == 600  # the run's setup, not the panel's default
    assert at.selectbox(key="setup_strategy").value == "fedavgm"
    page = [e for e in at.main.children.values() if e.type not in ("title", "radio", "expandable")]
    assert [e.type for e in page[:3]] == ["success", "subheader", "flex_container"]  # the run, then its controls
    assert "reopened" in page[0].value and page[1].value == "Training"
    assert not any("without collecting" in m.value for m in at.markdown)
    assert at.button(key="start").proto.label == "Continue"
    assert any("press Continue" in i.value for i in at.info) and not any("**Start**" in i.value for i in at.info)
    federation = federation_of(at)
    snapshot = federation.snapshot()
    assert federation.run_id == recorded_runs[1] and federation.config.strategy == "fedavgm"
    assert (snapshot.round, snapshot.total_rounds) == (1, 3)
    assert at.radio(key="page").value == "Training"
    assert "global_metrics" in plotly_keys(at)  # the history came back with it
    at.run()
    assert federation_of(at).snapshot().total_rounds == 3  # the setup panel now says 3 rounds too


@needs_data
def test_a_resumed_run_keeps_its_devices_switched_off(make_app, app_env, tmp_path, fashion):
    """Devices switched off before and after training stay off when the run is resumed from the Runs page."""
    from engine.config import FederationConfig
    from engine.federation import Federation
    from engine.store import RunStore

    app_env.setenv("FL_RUNS_DIR", str(tmp_path / "runs"))
    store = RunStore(tmp_path / "runs")
    config = FederationConfig(model="mlp", num_devices=3, train_samples=600, test_samples=200, rounds=1,
                              min_devices=1, data_dir=DATA_DIR)
    federation = Federation(config, dataset=fashion, store=store, label="tiny")
    federation.set_active(1, False)  # before the run is recorded
    snapshot = run_to_finish(federation)
    assert 1 not in snapshot.history[0].selected
    federation.set_active(2, False)  # after its last round
    federation.close()

    app_env.setenv("FL_AUTO_CREATE", "0")
    at = make_app().run()
    at.radio(key="page").set_value("Runs").run()
    at.selectbox(key="runs_open").set_value(federation.run_id).run()
    at.button(key="runs_resume").click().run()
    no_exceptions(at)
    assert [d.active for d in federation_of(at).snapshot().devices] == [True, False, False]
    assert [at.toggle(key=f"active_{d}").value for d in range(3)] == [True, False, False]


@needs_data
def test_a_device_switched_off_mid_run_sits_out_every_later_round(make_app, app_env):
    """The toggle's callback reaches the engine in the script run of the click, not on a later refresh."""
    from engine.results import RunStatus

    app_env.setenv("FL_DEFAULT_ROUNDS", "50")
    at = make_app().run()
    at.button(key="start").click().run()
    wait_until(lambda: federation_of(at).snapshot().round >= 1)
    at.toggle(key="active_1").set_value(False).run()
    no_exceptions(at)
    federation = federation_of(at)
    snapshot = federation.snapshot()
    assert not snapshot.devices[1].active  # already in the engine when the click's script run ends
    in_progress = snapshot.round + 1  # the round device 1 may still finish
    wait_until(lambda: federation.snapshot().round >= in_progress + 2)
    federation.stop()
    history = federation.snapshot().history
    assert federation.snapshot().status is RunStatus.STOPPED
    assert all(1 not in r.selected for r in history if r.round > in_progress), \
        [(r.round, r.selected) for r in history]


@needs_data
def test_missing_runs_are_errors_not_tracebacks(make_app, app_env, recorded_runs, tmp_path):
    from app.runs import run_store
    import os

    app_env.setenv("FL_AUTO_CREATE", "0")
    at = make_app().run()
    at.radio(key="page").set_value("Runs").run()
    at.selectbox(key="runs_open").set_value(recorded_runs[0]).run()
    run_store(os.environ["FL_RUNS_DIR"]).delete_run(recorded_runs[0])  # another tab deleted it
    at.button(key="runs_resume").click().run()
    no_exceptions(at)
    assert any("Cannot resume this run" in e.value for e in at.error)


@needs_data
def test_a_thousand_devices_render_in_pages_and_search_acts_on_the_matches(make_app, app_env):
    """The device view stays usable at 1,000 devices: one page of 50, a grouped heatmap, bulk actions on a search.

    How long it takes is a benchmark's business (``benchmarks/``), not this test's: AppTest's per-run limit
    only bounds a hang."""
    app_env.setenv("FL_DEFAULT_DEVICES", "1000")
    app_env.setenv("FL_DEFAULT_TRAIN_SAMPLES", "20000")
    at = make_app().run()
    no_exceptions(at)
    assert len(federation_of(at).snapshot().devices) == 1000
    assert len(at.data_editor) == 1 and len(at.data_editor[0].value) == 50
    assert len(plotly_spec(at, "label_distribution")["data"][0]["y"]) == charts.MAX_HEATMAP_ROWS

    at.text_input(key="device_search").set_value("100-199").run()
    assert list(at.data_editor[0].value["device"])[:2] == [100, 101]
    at.button(key="deactivate_filtered").click().run()
    no_exceptions(at)
    assert sum(d.active for d in federation_of(at).snapshot().devices) == 900
    at.text_input(key="device_search").set_value("").run()
    at.number_input(key="device_page").set_value(20).run()
    assert list(at.data_editor[0].value["device"])[-1] == 999
