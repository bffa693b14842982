"""The dashboard under bad input and careless starts: a real `streamlit run` from another folder, and AppTest."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.preprocess import MAX_UPLOAD_BYTES, NOTHING_TO_CLASSIFY
from tests.test_app import (APP_FILE, PROJECT_ROOT, app_env, federation_of, make_app,  # noqa: F401
                            needs_data, no_exceptions)

CONFIG_FILE = PROJECT_ROOT / "app" / ".streamlit" / "config.toml"


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_started_from_another_folder_the_server_is_localhost_only(tmp_path):
    """`cd /tmp && streamlit run /path/app/main.py`: the config next to the script still applies."""
    port = free_port()
    log = tmp_path / "streamlit.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", APP_FILE, "--server.port", str(port)],
                                  cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "FL_AUTO_CREATE": "0"})
    try:
        deadline = time.monotonic() + 60
        while not listening_addresses(port):
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()
            time.sleep(0.2)
        time.sleep(0.5)  # a second (IPv6) socket may follow the first
        assert listening_addresses(port) <= {"127.0.0.1", "::1"}, listening_addresses(port)
    finally:
        server.terminate()
        server.wait(30)
    assert "can abort the /_stcore/stream handshake" not in log.read_text()  # websockets/uvicorn pins


def test_the_config_next_to_the_script_is_safe_and_matches_the_upload_limit():
    config = tomllib.loads(CONFIG_FILE.read_text())
    assert config["server"]["address"] == "localhost"
    assert config["browser"]["gatherUsageStats"] is False
    assert config["server"]["maxUploadSize"] * 2**20 == MAX_UPLOAD_BYTES  # Streamlit's MB are MiB


def test_streamlit_reads_the_script_config_from_any_working_directory(tmp_path):
    code = ("import streamlit.config as c; c._main_script_path = {!r}; c.get_config_options(force_reparse=True);"
            "print(c.get_option('server.address'), c.get_option('browser.gatherUsageStats'),"
            " c.get_option('server.maxUploadSize'))").format(APP_FILE)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["localhost", "False", "20"], result.stderr


@pytest.mark.parametrize("address, warned", [("0.0.0.0", True), ("localhost", False)])
def test_the_page_warns_when_other_machines_can_reach_it(make_app, app_env, address, warned):
    from streamlit import config

    app_env.setenv("FL_AUTO_CREATE", "0")
    config.set_option("server.address", address)
    try:
        at = make_app().run()
    finally:
        config.set_option("server.address", "localhost")
    no_exceptions(at)
    assert any("other machines can open it" in w.value for w in at.warning) is warned


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@needs_data
@pytest.mark.parametrize("name, image", [
    ("blank_white.png", Image.new("RGB", (640, 480), "white")),
    ("ribbon.png", Image.new("L", (30000, 8), 255)),
    ("one_pixel.png", Image.new("L", (1, 1), 0)),
])
def test_blank_uploads_say_nothing_to_classify_and_show_what_was_read(make_app, app_env, tmp_path, name, image):
    app_env.setenv("FL_RUNS_DIR", str(tmp_path / "runs"))
    at = make_app().run()
    no_exceptions(at)
    at.file_uploader(key="upload").set_value((name, png(image), "image/png")).run()
    no_exceptions(at)
    assert NOTHING_TO_CLASSIFY in [e.value for e in at.error]
    assert not any("guess:" in m.value or "Predicted:" in m.value for m in at.markdown)
    assert any(caption.startswith("Your upload") for image in at.get("image") for caption in image.captions)
    from engine.store import RunStore

    assert RunStore(tmp_path / "runs").list_runs() == []  # a page load records no empty run


def test_a_damaged_run_index_is_explained_on_the_runs_page(make_app, app_env, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "runs.sqlite").write_bytes(b"this is not a database" * 100)
    app_env.setenv("FL_RUNS_DIR", str(runs))
    app_env.setenv("FL_AUTO_CREATE", "0")
    at = make_app().run()
    at.radio(key="page").set_value("Runs").run()
    no_exceptions(at)
    assert any("is damaged" in e.value and "move it aside" in e.value for e in at.error)
    assert (runs / "runs.sqlite").read_bytes() == b"this is not a database" * 100


def test_captions_say_what_happened_not_a_misleading_figure():
    from app.charts import per_class_accuracy_figure, traffic_caption
    from app.devices_view import card_caption
    from engine.results import DeviceState, DeviceStatus
    from tests.test_app import make, round_result

    plain = make(type(round_result(1, {0: 0.5})), **{**round_result(3, {0: 0.5}).__dict__,
                                                        "bytes_up": 1000, "raw_bytes_up": 1000, "bytes_down": 900})
    assert "uncompressed float32" in traffic_caption(plain) and "×" not in traffic_caption(plain)
    squeezed = make(type(plain), **{**plain.__dict__, "bytes_up": 250})
    assert "4.0× smaller than float32" in traffic_caption(squeezed)
    framed = make(type(plain), **{**plain.__dict__, "bytes_up": 20_000, "raw_bytes_up": 800})  # a 2-weight model
    assert "25.0× its raw float32 size" in traffic_caption(framed) and "smaller" not in traffic_caption(framed)

    confusion = np.array([[5, 0], [5, 0]])  # class 1 is never right
    (bars,) = per_class_accuracy_figure(confusion, ["a", "b"]).data
    assert list(bars.text) == ["100%", "0%"] and bars.textposition == "outside"

    leaving = DeviceState(device_id=2, active=False, status=DeviceStatus.TRAINING, samples=1200)
    assert card_caption(leaving) == "1,200 samples · leaves after this round"
    assert "leaves" not in card_caption(DeviceState(2, False, DeviceStatus.INACTIVE, 1200))
