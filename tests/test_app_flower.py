"""The dashboard driving the Flower backend: real SuperLink and SuperNode processes behind the same page."""

from __future__ import annotations

from engine.results import DeviceStatus, RunStatus
from tests.test_app import federation_of, make_app, app_env, no_exceptions, plotly_keys, run_until  # noqa: F401

PROCESS_START_TIMEOUT = 240  # the script run that starts a SuperLink and 3 SuperNodes, on a loaded machine


def test_dashboard_runs_a_federation_on_flower_with_the_same_controls_and_charts(make_app, monkeypatch):
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FL_DEFAULT_DEVICES", "3")
    monkeypatch.setenv("FL_DEFAULT_TRAIN_SAMPLES", "1500")
    at = make_app().run()
    no_exceptions(at)
    at.selectbox(key="setup_backend").set_value("flower").run()
    assert not at.button(key="apply").disabled  # same config, other backend: can be applied
    at.button(key="apply").click().run(timeout=PROCESS_START_TIMEOUT)
    no_exceptions(at)
    federation = federation_of(at)
    assert type(federation).__name__ == "Federation" and federation.remote.backend == "flower"  # one class
    at.toggle(key="active_2").set_value(False).run()  # deactivated before the first round
    at.button(key="start").click().run()
    no_exceptions(at)
    try:
        run_until(at, lambda s: s.status in (RunStatus.FINISHED, RunStatus.FAILED), timeout=240)
        snapshot = federation.snapshot()
        assert snapshot.status is RunStatus.FINISHED, snapshot.message
        assert len(snapshot.history) == 2 and snapshot.history[-1].global_accuracy > 0.3
        assert all(2 not in r.selected for r in snapshot.history)
        assert snapshot.devices[2].status is DeviceStatus.INACTIVE
        at.run()
        assert {"global_metrics", "device_accuracy", "latest_device_accuracy"} <= plotly_keys(at)
    finally:
        federation.close()
    from flower_app.processes import processes_tagged

    assert processes_tagged(federation.remote.deployment.tag) == []

    # The recorded run resumes where the setup panel says devices run: on Flower again, device 2 still off.
    at.radio(key="page").set_value("Runs").run()
    at.selectbox(key="runs_open").set_value(federation.run_id).run()
    at.number_input(key="runs_more_rounds").set_value(1).run()
    at.button(key="runs_resume").click().run(timeout=PROCESS_START_TIMEOUT)
    no_exceptions(at)
    resumed = federation_of(at)
    try:
        assert resumed.run_id == federation.run_id and resumed.remote is not None
        assert resumed.remote.backend == "flower" and resumed.snapshot().round == 2
        at.button(key="start").click().run()
        run_until(at, lambda s: s.status in (RunStatus.FINISHED, RunStatus.FAILED), timeout=240)
        snapshot = resumed.snapshot()
        assert snapshot.status is RunStatus.FINISHED, snapshot.message
        assert len(snapshot.history) == 3 and 2 not in snapshot.history[-1].selected
    finally:
        resumed.close()
    assert processes_tagged(resumed.remote.deployment.tag) == []


def test_settings_flower_cannot_carry_are_refused_in_place(make_app, monkeypatch):
    at = make_app().run()
    at.selectbox(key="setup_backend").set_value("flower").run()
    at.checkbox(key="setup_secure").check().run()
    no_exceptions(at)
    # shown in place, before any click, like every other setup problem; nothing can be applied
    assert any("flower backend: secure aggregation" in e.value.lower() for e in at.sidebar.error)
    assert at.button(key="apply").disabled
    assert federation_of(at).remote is None  # the in-process federation is kept
    at.number_input(key="setup_devices").set_value(20).run()
    assert any("too many for flower" in e.value.lower() for e in at.sidebar.error)
    at.number_input(key="setup_devices").set_value(3).run()
    at.checkbox(key="setup_secure").uncheck().run()
    at.selectbox(key="setup_personalize").set_value("fedper").run()  # it runs, and the sidebar says what differs
    assert any("FedPer's heads" in i.value and "run store" in i.value for i in at.sidebar.info), at.sidebar.info
    assert not at.button(key="apply").disabled
    at.selectbox(key="setup_backend").set_value("in-process").run()
    assert not any("flower" in e.value.lower() for e in at.sidebar.error)
    assert not any("FedPer" in i.value for i in at.sidebar.info)  # in-process the run store keeps them


def test_a_deployment_has_no_device_cap_and_its_settings_are_checked_in_place(make_app):
    at = make_app().run()
    at.selectbox(key="setup_backend").set_value("deployment").run()
    no_exceptions(at)
    assert at.text_input(key="setup_deployment_address").value == "0.0.0.0:9093"
    at.number_input(key="setup_devices").set_value(20).run()
    assert not any("too many" in e.value.lower() for e in at.sidebar.error)  # only loopback is capped
    at.text_input(key="setup_deployment_address").set_value("no-port").run()
    assert any("host:port" in e.value for e in at.sidebar.error)
    assert at.button(key="apply").disabled
    at.radio(key="setup_deployment_start_superlink").set_value("attach").run()
    assert at.text_input(key="setup_deployment_superexec_secret").value == ""
    assert federation_of(at).remote is None  # nothing was built or started
