"""Page layout of the dashboard. Run from the project root: ``streamlit run app/main.py``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow
PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
if PROJECT_ROOT not in sys.path:  # Streamlit only puts app/ on the path; engine, data and devices live above
    sys.path.insert(0, PROJECT_ROOT)

import streamlit as st  # noqa: E402

from app import controls_view, devices_view, predict_view, results_view, runs_view, sidebar, state  # noqa: E402
from app.defaults import auto_create, refresh_seconds  # noqa: E402
from app.runtime_fixes import keep_keras_session  # noqa: E402
from engine.store import short_id  # noqa: E402

INTRO = (
    "Federated learning trains one model across many devices **without collecting their data**: each round, "
    "the server sends the global model to the active devices, each trains it on its own images, and the "
    "server averages their updates into a new global model. Set up the federation in the sidebar, then "
    "start training and watch it learn."
)
LOCAL_ADDRESSES = ("localhost", "127.0.0.1", "::1")
DRAWN_AT_KEY = "page_drawn_at"
IDLE_DEVICE_WATCH_SECONDS = 2.0
MIN_REDRAW_SECONDS = 1.0  # at most one full redraw per second for new rounds, however fast rounds are


def live_status(federation, phase: str, drawn_round: int) -> None:
    """Status, progress and devices, refreshed while a run is live (the engine trains in its own thread).

    A new round or a change of phase (started, paused, ended) redraws the whole page: the charts and
    predictions are only rebuilt then, not on every refresh.
    """
    snapshot = federation.snapshot()
    if controls_view.phase(snapshot) != phase:
        st.rerun()
    drawn_ago = time.monotonic() - st.session_state.get(DRAWN_AT_KEY, 0.0)
    if snapshot.round != drawn_round and drawn_ago >= MIN_REDRAW_SECONDS:
        st.rerun()
    controls_view.render_status(snapshot)
    st.divider()
    st.subheader("Devices", anchor="devices")
    devices_view.render(federation, snapshot)


def training_page(federation, setup) -> None:
    """The live federation: controls, status, devices, curves, model quality and predictions."""
    if federation is None:
        st.info("No federation yet: choose a setup in the sidebar and press **Create federation**.")
        return
    st.session_state[DRAWN_AT_KEY] = time.monotonic()
    snapshot = federation.snapshot()
    phase = controls_view.phase(snapshot)
    st.subheader("Training", anchor="training")
    controls_view.render_buttons(federation, setup)
    interval = refresh_seconds(os.environ) if phase != "idle" else None  # refresh only while a run is live
    if interval is None and state.backend_of(federation) != "in-process":
        interval = IDLE_DEVICE_WATCH_SECONDS  # devices on other machines join and leave at any time
    st.fragment(live_status, run_every=interval)(federation, phase, snapshot.round)
    devices_view.render_label_distribution(federation)
    st.divider()
    results_view.render_learning_curves(snapshot)
    results_view.render_rounds_detail(snapshot.history)
    results_view.render_model_quality(snapshot, federation.dataset.class_names)
    st.divider()
    st.fragment(predict_view.render)(federation)  # uploads and picks redraw only this part


def exposure_warning(address: str | None) -> str | None:
    """A warning when the server listens beyond this machine (``server.address`` is not a loopback one)."""
    address = (address or "").strip()
    if address in LOCAL_ADDRESSES:
        return None
    where = f"address {address}" if address else "every network interface"
    return (f"This dashboard listens on {where}: other machines can open it and control training, without "
            "TLS or a login. Restart it with `--server.address localhost` unless that is what you want.")


def main() -> None:
    keep_keras_session()  # Streamlit would otherwise reset Keras after every rerun, slowing training a lot
    st.set_page_config(page_title="Federated learning dashboard", page_icon=":material/hub:", layout="wide")
    st.title("Federated learning dashboard")
    exposed = exposure_warning(st.get_option("server.address"))
    if exposed:
        st.warning(exposed, icon=":material/public:")
    page = st.radio("Page", [runs_view.LIVE_PAGE, runs_view.RUNS_PAGE], key=runs_view.PAGE_KEY, horizontal=True,
                    label_visibility="collapsed",
                    format_func={runs_view.LIVE_PAGE: "Live training", runs_view.RUNS_PAGE: "Recorded runs"}.get)

    setup = sidebar.render(state.get_federation())  # the setup panel stays on both pages (it keeps its values)
    resume = state.take_resume_request()
    requested = state.take_create_request(setup.config, auto_create(os.environ) and page == runs_view.LIVE_PAGE)
    if resume is not None:
        if state.resume_run(*resume) is not None:
            st.rerun()
    elif requested is not None:
        if state.create_federation(requested) is not None:
            st.rerun()  # redraw the setup panel and controls for the new federation
    federation = state.get_federation()
    if federation is not None and setup.valid and federation.snapshot().total_rounds != setup.config.rounds \
            and sidebar.same_setup(setup.config, state.requested_config(federation)):
        federation.set_rounds(setup.config.rounds)  # rounds may change at any time, even mid-run

    if state.creation_error():
        st.error(state.creation_error())
    if page == runs_view.RUNS_PAGE:
        runs_view.render()
        return
    if state.is_resumed(federation):  # a reopened run: its controls first, where the Runs page left the view
        snapshot = federation.snapshot()
        st.success(f"Run {short_id(federation.run_id)} reopened from Recorded runs after round {snapshot.round}.",
                   icon=":material/history:")
    else:
        st.markdown(INTRO)
    training_page(federation, setup)


main()
