"""Training controls (start, pause, resume, stop, reset) and the live run status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import streamlit as st

from engine.results import RunStatus, Snapshot
from app import state

if TYPE_CHECKING:
    from engine.federation import Federation
    from app.sidebar import Setup

STOP_TIMEOUT_SECONDS = 15.0
SHORT_STATUS = {RunStatus.WAITING: "Waiting"}  # the metric has room for one word; the message says more


@dataclass(frozen=True)
class Actions:
    """Which control buttons make sense for a snapshot."""

    start: bool
    pause: bool
    resume: bool
    stop: bool


def phase(snapshot: Snapshot) -> str:
    """"idle", "running" or "paused": changes of phase need a full page rerun (buttons, refresh timer)."""
    if snapshot.status is RunStatus.PAUSED:
        return "paused"
    return "running" if snapshot.is_live else "idle"


def rounds_left(snapshot: Snapshot) -> bool:
    return snapshot.total_rounds is None or snapshot.round < snapshot.total_rounds


def available_actions(snapshot: Snapshot) -> Actions:
    live = snapshot.is_live
    return Actions(
        start=not live and rounds_left(snapshot),
        pause=snapshot.status in (RunStatus.RUNNING, RunStatus.WAITING),
        resume=snapshot.status is RunStatus.PAUSED,
        stop=live,
    )


def format_elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def rounds_text(snapshot: Snapshot) -> str:
    total = "∞" if snapshot.total_rounds is None else str(snapshot.total_rounds)
    return f"{snapshot.round} / {total}"


def progress_text(snapshot: Snapshot) -> str:
    """What the round in progress is doing: devices training, or the server averaging and evaluating."""
    number = snapshot.round + 1
    if snapshot.round_progress >= 1.0:
        return f"Round {number}: devices are done; the server averages their updates and tests the new model"
    return f"Round {number}: local training {snapshot.round_progress:.0%} done"


def _stop(federation: Federation) -> None:
    federation.stop(wait=True, timeout=STOP_TIMEOUT_SECONDS)


def _reset(federation: Federation, setup: Setup) -> None:
    """Discard the run; the next script run rebuilds the federation from the setup panel."""
    state.close_federation()
    if setup.valid:
        state.request_create(setup.config)
    else:
        state.request_create(federation.config)
        st.toast("The setup panel has problems, so the previous setup was rebuilt.")


def render_buttons(federation: Federation, setup: Setup) -> None:
    """The control buttons; they act through callbacks, so the page redraws with the new state."""
    snapshot = federation.snapshot()
    actions = available_actions(snapshot)
    fresh = snapshot.round == 0 and snapshot.status is RunStatus.READY
    with st.container(horizontal=True, key="controls"):
        st.button("Start" if fresh else "Continue", key="start", icon=":material/play_arrow:", type="primary",
                  disabled=not actions.start, on_click=federation.start)
        st.button("Pause", key="pause", icon=":material/pause:", disabled=not actions.pause,
                  on_click=federation.pause)
        st.button("Resume", key="resume", icon=":material/resume:", disabled=not actions.resume,
                  on_click=federation.resume)
        st.button("Stop", key="stop", icon=":material/stop:", disabled=not actions.stop,
                  on_click=_stop, args=(federation,))
        st.button("Reset", key="reset", icon=":material/restart_alt:", on_click=_reset, args=(federation, setup),
                  help="Discard the training and rebuild the federation from the setup panel.")
    st.caption(federation.training_note)
    if not snapshot.is_live and not rounds_left(snapshot):
        st.caption(f"All {snapshot.total_rounds} rounds are done: raise **Rounds** in the setup panel "
                   "(or tick *Run until stopped*) to continue training.")


def render_status(snapshot: Snapshot) -> None:
    """Status metrics, the progress of the round in progress, and the engine's message."""
    latest = snapshot.latest
    previous = snapshot.history[-2] if len(snapshot.history) > 1 else None
    status_col, rounds_col, time_col, accuracy_col = st.columns(4)
    status_col.metric("Status", SHORT_STATUS.get(snapshot.status, snapshot.status.value.capitalize()))
    rounds_col.metric("Completed rounds", rounds_text(snapshot))
    time_col.metric("Elapsed", format_elapsed(snapshot.elapsed))
    if latest is not None and latest.is_regression:
        accuracy_col.metric("Global R²", f"{latest.global_r2:.3f}", help=f"MSE {latest.global_loss:.4g}, "
                            f"MAE {latest.global_mae:.4g} on the server's test set")
    else:
        accuracy_col.metric(
        "Global accuracy",
        "–" if latest is None else f"{latest.global_accuracy:.1%}",
        delta=None if latest is None or previous is None
        else f"{(latest.global_accuracy - previous.global_accuracy) * 100:+.1f} pts",
        )
    if snapshot.status is RunStatus.RUNNING:
        st.progress(min(1.0, snapshot.round_progress), text=progress_text(snapshot))
    elif snapshot.total_rounds:
        st.progress(min(1.0, snapshot.round / snapshot.total_rounds),
                    text=f"{snapshot.round} of {snapshot.total_rounds} rounds done")
    _message(snapshot)


def _message(snapshot: Snapshot) -> None:
    if snapshot.status is RunStatus.WAITING:
        st.warning(snapshot.message + " Activate more devices below.", icon=":material/hourglass_top:")
    elif snapshot.status is RunStatus.FAILED:
        st.error(snapshot.message)
    elif snapshot.status is RunStatus.READY and snapshot.round:  # resumed: the button says Continue, so does this
        st.info(snapshot.message)
    elif snapshot.status is RunStatus.READY:
        st.info("Ready: press **Start** to train. Devices train locally and only send model weights to the "
                "server, which averages them into the global model.")
    elif snapshot.status is RunStatus.RUNNING:
        st.caption(snapshot.message)
    else:
        st.info(snapshot.message)
    latest = snapshot.latest
    if latest is not None and latest.problems:
        lines = "; ".join(f"device {p.device_id} {p.kind}: {p.reason}" for p in latest.problems)
        st.warning(f"Round {latest.round}: {len(latest.problems)} device update(s) left out — {lines}")
