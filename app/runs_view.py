"""The Runs page: past runs, comparing them, opening, resuming, downloading, exporting and deleting them."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import streamlit as st

from engine.errors import UserError, one_line
from engine.store import RunStore, RunSummary, short_id
from engine.strategies import STRATEGIES
from app import charts, results_view, state
from app.runs import current_store, run_title, runs_table
from app.setup_helpers import widget_values

PAGE_KEY = "page"
LIVE_PAGE, RUNS_PAGE = "Training", "Runs"
CONFIRM_KEY = "runs_confirm_delete"  # the run id awaiting confirmation, or "*" for all runs
EXPORT_FORMATS = {
    "keras": ("Keras (.keras)", ".keras"),
    "tflite": ("TFLite (.tflite)", ".tflite"),
    "tflite-int8": ("TFLite int8-quantised (.tflite)", ".tflite"),
    "saved_model": ("TensorFlow SavedModel (.zip)", ".zip"),
}
DELETE_ERROR_KEY = "runs_delete_error"  # why the last deletion was refused (a run training in another tab)
EXPORT_KEY = "runs_exported_model"  # (run id, round, format, file name, bytes) of the latest export


def _live_run_id() -> str | None:
    federation = state.get_federation()
    return getattr(federation, "run_id", None)


def _resume(store: RunStore, run_id: str, more_rounds: int) -> None:
    """Button callback: reopen the run on the training page, the setup panel showing its configuration."""
    try:
        config = store.load_config(run_id)
        done = len(store.load_history(run_id))
    except (KeyError, FileNotFoundError, UserError):
        config = None  # resume_run explains it
    if config is not None:
        config = config.with_changes(rounds=done + more_rounds)
        state.seed_setup(config, widget_values(config, STRATEGIES[config.strategy].parameters()))
    state.request_resume(run_id, more_rounds)
    st.session_state[PAGE_KEY] = LIVE_PAGE  # the resumed run continues on the training page


def _delete(store: RunStore, run_id: str) -> None:
    """Button callback; runs that train (here or in another tab or process) are kept, and it says so."""
    st.session_state.pop(DELETE_ERROR_KEY, None)
    try:
        if run_id == "*":
            live = _live_run_id()
            kept = store.delete_all(keep=[live] if live else [])
            if kept:
                st.session_state[DELETE_ERROR_KEY] = (f"Kept {len(kept)} run(s) that are training: "
                                                      f"{', '.join(map(short_id, kept))}.")
        else:
            store.delete_run(run_id)
    except UserError as error:
        st.session_state[DELETE_ERROR_KEY] = f"Not deleted: {error}"
    st.session_state.pop(CONFIRM_KEY, None)
    st.session_state.pop(EXPORT_KEY, None)


def export_bytes(store: RunStore, run_id: str, round_number: int, fmt: str) -> tuple[str, bytes]:
    """The global model after ``round_number`` as a downloadable file: (file name, contents)."""
    from engine.export import export_model  # TensorFlow

    config = store.load_config(run_id)
    checkpoint = store.load_checkpoint(run_id, round_number)
    representative = None
    if fmt == "tflite-int8":
        dataset = state.dataset_slot(config.dataset, config.data_dir).get(progress=lambda _: None)
        representative = dataset.x_train[:200].astype("float32") / 255.0
    name = f"{config.model}-{short_id(run_id)}-round{round_number}"
    with tempfile.TemporaryDirectory() as folder:
        if fmt == "saved_model":
            exported = export_model(config.model, checkpoint.weights, fmt, Path(folder) / name)
            archive = shutil.make_archive(str(Path(folder) / name), "zip", root_dir=exported)
            return f"{name}-saved_model.zip", Path(archive).read_bytes()
        suffix = EXPORT_FORMATS[fmt][1]
        exported = export_model(config.model, checkpoint.weights, fmt, Path(folder) / f"{name}{suffix}",
                                representative_images=representative)
        return f"{name}{'-int8' if fmt == 'tflite-int8' else ''}{suffix}", Path(exported).read_bytes()


def _prepare_export(store: RunStore, run_id: str, round_number: int, fmt: str) -> None:
    try:
        file_name, data = export_bytes(store, run_id, round_number, fmt)
        st.session_state[EXPORT_KEY] = (run_id, round_number, fmt, file_name, data)
    except (KeyError, FileNotFoundError, UserError) as error:
        st.session_state[EXPORT_KEY] = (run_id, round_number, fmt, None, f"Cannot export: {one_line(error)}")
    except Exception as error:  # never a traceback
        st.session_state[EXPORT_KEY] = (run_id, round_number, fmt, None, f"Export failed: {one_line(error)}")


def _compare(store: RunStore, runs: list[RunSummary]) -> None:
    titles = {r.run_id: run_title(r) for r in runs}
    chosen = st.multiselect("Compare runs (overlay their accuracy)", list(titles), format_func=titles.get,
                            key="runs_compare", placeholder="Choose two or more runs")
    if not chosen:
        return
    histories = {titles[run_id]: store.load_history(run_id) for run_id in chosen}
    st.plotly_chart(charts.accuracy_overlay_figure(histories), key="runs_overlay",
                    config=results_view.CHART_CONFIG)
    if len(chosen) < 2:
        st.caption("Choose another run to compare.")


def _actions(store: RunStore, run: RunSummary) -> None:
    """Resume, download metrics, export the model, delete."""
    resume, download, export = st.columns(3, gap="medium")
    with resume:
        st.markdown("**Resume**")
        more = st.number_input("More rounds", min_value=1, max_value=10_000, value=3, key="runs_more_rounds")
        st.button("Resume this run", key="runs_resume", icon=":material/play_arrow:",
                  on_click=_resume, args=(store, run.run_id, int(more)),
                  help="Reopens it at its last round (same devices, same data) as the live federation on the "
                       "training page, its devices where the setup panel's *Where devices run* says.")
    with download:
        st.markdown("**Metrics**")
        st.download_button("Download CSV", store.export_metrics(run.run_id, "csv"), file_name=f"{run.run_id}.csv",
                           mime="text/csv", key="runs_csv", icon=":material/download:")
        st.download_button("Download JSON", store.export_metrics(run.run_id, "json"),
                           file_name=f"{run.run_id}.json", mime="application/json", key="runs_json",
                           icon=":material/download:")
    with export:
        st.markdown("**Global model**")
        rounds = store.checkpoint_rounds(run.run_id)
        if not rounds:
            st.caption("No checkpoint recorded for this run.")
        else:
            round_number = st.selectbox("Checkpoint (round)", rounds[::-1], key="runs_checkpoint")
            fmt = st.selectbox("Format", list(EXPORT_FORMATS), format_func=lambda f: EXPORT_FORMATS[f][0],
                               key="runs_format")
            st.button("Prepare model file", key="runs_export", on_click=_prepare_export,
                      args=(store, run.run_id, round_number, fmt))
            prepared = st.session_state.get(EXPORT_KEY)
            if prepared and prepared[:3] == (run.run_id, round_number, fmt):
                if prepared[3] is None:
                    st.error(prepared[4])
                else:
                    st.download_button(f"Download {prepared[3]}", prepared[4], file_name=prepared[3],
                                       key="runs_model_download", icon=":material/download:")
    _delete_controls(store, run)


def _delete_controls(store: RunStore, run: RunSummary) -> None:
    """Delete this run / all runs, each after a confirmation."""
    live = _live_run_id()
    with st.container(horizontal=True):
        st.button("Delete this run", key="runs_delete", icon=":material/delete:", disabled=run.run_id == live,
                  help="The live federation's run cannot be deleted while it is open." if run.run_id == live else None,
                  on_click=st.session_state.__setitem__, args=(CONFIRM_KEY, run.run_id))
        st.button("Delete all runs", key="runs_delete_all", icon=":material/delete_sweep:",
                  on_click=st.session_state.__setitem__, args=(CONFIRM_KEY, "*"))
    if st.session_state.get(DELETE_ERROR_KEY):
        st.warning(st.session_state[DELETE_ERROR_KEY])
    pending = st.session_state.get(CONFIRM_KEY)
    if pending in (run.run_id, "*"):
        what = "all recorded runs" + (" (except the live federation's)" if live else "") if pending == "*" \
            else f"run {short_id(run.run_id)} ({run.label or run.model})"
        st.warning(f"Delete {what}? This cannot be undone.")
        with st.container(horizontal=True):
            st.button("Yes, delete", key="runs_confirm", type="primary", on_click=_delete, args=(store, pending))
            st.button("Cancel", key="runs_cancel", on_click=st.session_state.pop, args=(CONFIRM_KEY, None))


def _open(store: RunStore, runs: list[RunSummary]) -> None:
    titles = {r.run_id: run_title(r) for r in runs}
    run_id = st.selectbox("Open a run", list(titles), format_func=titles.get, key="runs_open", index=None,
                          placeholder="Choose a run to see its charts")
    if run_id is None:
        return
    run = next(r for r in runs if r.run_id == run_id)
    history = store.load_history(run_id)
    st.markdown(f"#### {run.label or run.run_id}")
    best = "–" if run.best_accuracy is None else f"{run.best_accuracy:.1%} (round {run.best_round})"
    st.caption(f"{run.dataset} · {run.model.upper()} · {run.strategy} · {run.partition} · {run.num_devices} devices"
               f" · {run.rounds} rounds · best {best} · {run.status}"
               + (" · secure aggregation: per-device metrics were not recorded" if run.private else ""))
    if history:
        results_view.render_history_curves(history, prefix="run_")
        results_view.render_rounds_detail(history, prefix="run_")
    else:
        st.info("This run has no completed round yet.")
    _actions(store, run)


def render() -> None:
    """The whole Runs page; store errors become messages, never tracebacks."""
    st.subheader("Recorded runs", anchor="runs")
    try:
        store = current_store()
        runs = store.list_runs()
        if not runs:
            st.info("No runs recorded yet: every federation created on the training page is recorded here.")
            return
        st.dataframe(runs_table(runs), hide_index=True, width="stretch", key="runs_table",
                     column_config={
                         "run": None,
                         "final accuracy": st.column_config.NumberColumn(format="%.1f%%"),
                         "best accuracy": st.column_config.NumberColumn(format="%.1f%%"),
                     })
        _compare(store, runs)
        st.divider()
        _open(store, runs)
    except UserError as error:  # a damaged run index, a run deleted by another tab: says what to do
        st.error(str(error))
    except Exception as error:  # never a traceback
        st.error(f"Could not read the recorded runs: {one_line(error)}")
