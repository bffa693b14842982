"""The devices: activation toggles, live status, sample counts, bulk actions and the label heatmap."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from engine.results import DeviceState, DeviceStatus, Snapshot
from app.charts import MAX_HEATMAP_ROWS, label_distribution_figure

if TYPE_CHECKING:
    from engine.federation import Federation

MAX_TOGGLE_DEVICES = 24  # above this, a paginated table with an "active" checkbox column replaces the cards
PAGE_SIZE = 50
GRID_COLUMNS = 6
TABLE_VERSION_KEY = "device_table_version"

# Keyed by the status text, so statuses the engine adds later still render (in gray).
STATUS_COLOURS = {
    DeviceStatus.IDLE.value: "gray",
    DeviceStatus.TRAINING.value: "blue",
    DeviceStatus.SENT.value: "green",
    DeviceStatus.FAILED.value: "red",
    DeviceStatus.REJECTED.value: "orange",
    "dropped": "orange",
    DeviceStatus.INACTIVE.value: "violet",
}
STATUS_ICONS = {
    DeviceStatus.IDLE.value: ":material/schedule:",
    DeviceStatus.TRAINING.value: ":material/model_training:",
    DeviceStatus.SENT.value: ":material/cloud_upload:",
    DeviceStatus.FAILED.value: ":material/error:",
    DeviceStatus.REJECTED.value: ":material/block:",
    "dropped": ":material/signal_disconnected:",
    DeviceStatus.INACTIVE.value: ":material/power_settings_new:",
}


def toggle_key(device_id: int) -> str:
    return f"active_{device_id}"


def _set_active(federation: Federation, device_id: int) -> None:
    federation.set_active(device_id, bool(st.session_state[toggle_key(device_id)]))


def _sync_toggle(device: DeviceState) -> None:
    """Follow changes made outside this toggle (bulk buttons, a resume), and only those.

    Writing the engine's value into the widget on every refresh would race with a click in flight: a
    snapshot taken just before the click's callback would flip the toggle back and re-activate the device.
    """
    seen_key = f"engine_active_{device.device_id}"
    if st.session_state.get(seen_key) != device.active:
        st.session_state[toggle_key(device.device_id)] = device.active
        st.session_state[seen_key] = device.active


def _device_card(federation: Federation, device: DeviceState) -> None:
    with st.container(border=True, key=f"device-{device.device_id}"):
        _sync_toggle(device)  # the engine is the source of truth
        st.toggle(f"Device {device.device_id}", key=toggle_key(device.device_id),
                  on_change=_set_active, args=(federation, device.device_id))
        status = device.status.value
        st.badge(status, color=STATUS_COLOURS.get(status, "gray"), icon=STATUS_ICONS.get(status, ":material/info:"),
                 help=device.detail or None)
        st.caption(card_caption(device))


def card_caption(device: DeviceState) -> str:
    """Samples, and for a device switched off mid-round that it still finishes this round."""
    leaving = not device.active and device.status is DeviceStatus.TRAINING
    return (f"{device.samples:,} samples" + (" · leaves after this round" if leaving else "")
            + (f" · {device.detail[:80]}" if device.detail else ""))


def _device_grid(federation: Federation, snapshot: Snapshot) -> None:
    for start in range(0, len(snapshot.devices), GRID_COLUMNS):
        columns = st.columns(GRID_COLUMNS)
        for column, device in zip(columns, snapshot.devices[start:start + GRID_COLUMNS]):
            with column:
                _device_card(federation, device)


def device_table(snapshot: Snapshot) -> pd.DataFrame:
    """One row per device, in device order (row i is device i)."""
    return pd.DataFrame(
        {
            "device": [d.device_id for d in snapshot.devices],
            "active": [d.active for d in snapshot.devices],
            "status": [d.status.value for d in snapshot.devices],
            "samples": [d.samples for d in snapshot.devices],
            "detail": [d.detail for d in snapshot.devices],
        }
    )


def changed_activity(table: pd.DataFrame, snapshot: Snapshot) -> dict[int, bool]:
    """Devices whose "active" tick in the (edited) table differs from the engine's state."""
    engine = {d.device_id: d.active for d in snapshot.devices}
    return {int(device): bool(active) for device, active in zip(table["device"], table["active"])
            if engine.get(int(device)) is not None and bool(active) != engine[int(device)]}


def filter_devices(table: pd.DataFrame, query: str) -> pd.DataFrame:
    """Rows matching ``query``: a device id ("7"), an id range ("100-199") or text in the status/detail."""
    query = (query or "").strip().lower()
    if not query:
        return table
    if query.isdigit():
        return table[table["device"] == int(query)]
    low, dash, high = query.partition("-")
    if dash and low.strip().isdigit() and high.strip().isdigit():
        return table[table["device"].between(int(low), int(high))]
    text = table["status"].str.lower() + " " + table["detail"].fillna("").str.lower()
    return table[text.str.contains(query, regex=False)]


def page_of(table: pd.DataFrame, page: int, size: int = PAGE_SIZE) -> pd.DataFrame:
    """Rows of 1-based page ``page`` (clamped to the pages there are)."""
    pages = max(1, -(-len(table) // size))
    page = min(max(1, int(page)), pages)
    return table.iloc[(page - 1) * size:page * size]


def _set_filtered(federation: Federation, device_ids: list[int], active: bool) -> None:
    for device_id in device_ids:
        federation.set_active(device_id, active)


def _device_editor(federation: Federation, snapshot: Snapshot) -> None:
    """A searchable, paginated table with an "active" checkbox column: usable for a thousand devices."""
    table = device_table(snapshot)
    search, page_column = st.columns([3, 1], gap="small", vertical_alignment="bottom")
    with search:
        query = st.text_input("Search devices", key="device_search", placeholder="id (7), range (100-199) or status",
                              help="A device id, a range of ids, or text in the status (e.g. failed, inactive).")
    filtered = filter_devices(table, query)
    pages = max(1, -(-len(filtered) // PAGE_SIZE))
    with page_column:
        page = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, key="device_page") \
            if pages > 1 else 1
    if query.strip():
        ids = [int(d) for d in filtered["device"]]
        with st.container(horizontal=True):
            st.caption(f"{len(ids)} devices match.")
            st.button("Activate these", key="activate_filtered", on_click=_set_filtered, args=(federation, ids, True))
            st.button("Deactivate these", key="deactivate_filtered", on_click=_set_filtered,
                      args=(federation, ids, False))
    shown = page_of(filtered, page)
    version = st.session_state.get(TABLE_VERSION_KEY, 0)
    edited = st.data_editor(
        shown.reset_index(drop=True), key=f"device_table_{version}", hide_index=True, height=420, width="stretch",
        disabled=["device", "status", "samples", "detail"],
        column_config={
            "device": st.column_config.NumberColumn("Device", format="%d"),
            "active": st.column_config.CheckboxColumn("Active", help="Tick to let the device take part"),
            "status": st.column_config.TextColumn("Status"),
            "samples": st.column_config.NumberColumn("Samples", format="%d"),
            "detail": st.column_config.TextColumn("Detail"),
        },
    )
    changes = changed_activity(edited, snapshot)
    if changes:
        for device_id, active in changes.items():
            federation.set_active(device_id, active)
        # A fresh editor drops the applied edits, so the table shows the engine's state again.
        st.session_state[TABLE_VERSION_KEY] = version + 1
        st.rerun()


PARTITION_NOTES = {
    "iid": "**IID split:** the training images were shuffled and dealt out evenly, so every device sees "
           "every class in similar amounts: the easy case.",
    "dirichlet": "**Dirichlet label skew:** each class is spread over the devices in random proportions; "
                 "with a small alpha most devices see only a few classes, which makes averaging harder.",
    "shards": "**Shards:** the images were sorted by label and cut into shards, and each device got a few "
              "shards, so each device knows only a couple of classes.",
    "quantity": "**Quantity skew:** every device sees all classes but the devices hold very different "
                "amounts of data; larger devices weigh more in the average.",
}


def render(federation: Federation, snapshot: Snapshot) -> None:
    """Device cards (or a table for many devices) with bulk actions; part of the live refresh."""
    active = sum(d.active for d in snapshot.devices)
    how = "Untick **Active** in the table" if len(snapshot.devices) > MAX_TOGGLE_DEVICES else "Toggle a device"
    st.caption(f"{active} of {len(snapshot.devices)} devices active. {how} at any time: the change applies "
               "from the next round. Each device keeps its data to itself.")
    with st.container(horizontal=True):
        st.button("Activate all", key="activate_all", icon=":material/toggle_on:",
                  on_click=federation.set_all_active, args=(True,))
        st.button("Deactivate all", key="deactivate_all", icon=":material/toggle_off:",
                  on_click=federation.set_all_active, args=(False,))
    if len(snapshot.devices) > MAX_TOGGLE_DEVICES:
        _device_editor(federation, snapshot)
    else:
        _device_grid(federation, snapshot)


def render_label_distribution(federation: Federation) -> None:
    """Heatmap of each device's training labels (fixed for a federation) and what the split means."""
    heatmap_column, note_column = st.columns([3, 1], gap="medium", vertical_alignment="center")
    with heatmap_column:
        figure = label_distribution_figure(federation.label_histogram,
                                           getattr(federation, "histogram_labels", federation.dataset.class_names),
                                           regression=federation.dataset.task == "regression")
        st.plotly_chart(figure, key="label_distribution", config={"displayModeBar": False})
        if len(federation.label_histogram) > MAX_HEATMAP_ROWS:
            st.caption(f"{len(federation.label_histogram)} devices: each row sums a group of consecutive devices.")
    with note_column:
        st.markdown(PARTITION_NOTES.get(federation.config.partition, ""))
