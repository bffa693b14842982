"""The dashboard as the control room of a real Flower deployment, in headless Chromium against `streamlit run`.

The dashboard starts a SuperLink (TLS, SuperNode authentication, certificates and
three SuperNode keys made in a temporary folder) and plays the run's ServerApp.
Three SuperNode processes are then started separately, as on three machines
(``scripts/supernode.py`` with the folder's ``ca.crt`` and one private key each,
each next to its ClientApp worker). The test watches them join in the device view,
trains, deactivates device 2 while round 1 runs (it sits out round 2), checks the
run is recorded, and saves a screenshot (FL_UPDATE_DOCS=1: also the README's docs/deployment.png).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_browser import (CHROMIUM, DATA_DIR, PROJECT_ROOT, Steps, browser_tab, device_card,
                                free_port, full_page_screenshot, kill_group, metric_value, wait_for,
                                wait_for_script_idle, wait_until_serving)

NUM_DEVICES = 3
APP_ENV = {
    "FL_DATA_DIR": DATA_DIR,
    "FL_DEFAULT_DEVICES": str(NUM_DEVICES),
    "FL_DEFAULT_MODEL": "mlp",
    "FL_DEFAULT_TRAIN_SAMPLES": "900",
    "FL_DEFAULT_TEST_SAMPLES": "300",
    "FL_DEFAULT_ROUNDS": "2",
    "FL_AUTO_CREATE": "0",
    "FLWR_TELEMETRY_ENABLED": "0",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}
# written to tests/output/ (git-ignored); FL_UPDATE_DOCS=1 also copies it to the README's docs/deployment.png
SCREENSHOT = PROJECT_ROOT / "tests" / "output" / "deployment.png"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no system Chromium at {CHROMIUM}")


def processes_using(port: int) -> list[int]:
    """Pids of SuperLink/SuperNode processes started for ``port`` (their command lines name it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(port) in command and ("superlink" in command or "supernode" in command):
                found.append(int(entry.name))
    return found


@pytest.fixture
def dashboard(tmp_path):
    """`streamlit run` with its runs in ``tmp_path``; afterwards it and every process on the SuperLink port end."""
    port, superlink_port = free_port(), free_port()
    log = tmp_path / "streamlit.log"
    env = {**os.environ, **APP_ENV, "FL_RUNS_DIR": str(tmp_path / "runs")}
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port),
             "--server.headless", "true"],
            cwd=PROJECT_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://localhost:{port}"
        wait_until_serving(process, url, log)
        yield url, superlink_port, tmp_path
    finally:
        kill_group(process)
        for pid in processes_using(superlink_port):  # the SuperLink runs in its own session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_supernodes(workdir: Path, certificates: Path, port: int):
    """Three SuperNodes as on three machines: each with ca.crt, its own key and node config, and its worker."""
    from flower_app.loopback import LocalDeployment

    nodes = LocalDeployment(workdir, NUM_DEVICES, data_dir=DATA_DIR)
    nodes.certificates, nodes.port = certificates, port
    workdir.mkdir(parents=True, exist_ok=True)
    for index in range(NUM_DEVICES):
        nodes.start_supernode(index)
    return nodes


@pytest.mark.timeout(1500)  # minutes on a loaded 2-core machine: real processes, TensorFlow in four
def test_dashboard_drives_a_deployment_of_separately_started_supernodes(dashboard):
    from playwright.sync_api import expect

    url, superlink_port, tmp_path = dashboard
    certificates = tmp_path / "certificates"
    step = Steps()
    nodes = None
    with browser_tab(url) as page:
        try:
            # Where devices run: a Flower deployment, its SuperLink started here on a free port.
            expect(page.get_by_role("button", name="Create federation", exact=True)).to_be_enabled(timeout=180_000)
            where = page.get_by_role("combobox", name="Where devices run")
            for _ in range(3):  # open the Advanced expander (a click while the page still loads can miss)
                if where.is_visible():
                    break
                page.get_by_text("Advanced", exact=True).first.click()
                page.wait_for_timeout(1500)
            option = page.get_by_role("option", name="A Flower deployment", exact=False)
            for _ in range(5):  # a rerun of the page can close the list before it is clicked: open it again
                where.click()
                try:
                    option.click(timeout=10_000)
                    break
                except Exception:
                    page.keyboard.press("Escape")
            expect(page.get_by_role("textbox", name="SuperLink address")).to_be_visible()
            for label, value in (("SuperLink address", f"127.0.0.1:{superlink_port}"),
                                 ("Certificates folder", str(certificates))):
                field = page.get_by_role("textbox", name=label)
                wait_for_script_idle(page)  # a rerun still drawing the sidebar can drop what is typed
                field.fill(value)
                field.press("Enter")
            wait_for_script_idle(page)
            for label, value in (("SuperLink address", f"127.0.0.1:{superlink_port}"),
                                 ("Certificates folder", str(certificates))):
                expect(page.get_by_role("textbox", name=label)).to_have_value(value)
            create = page.get_by_role("button", name="Create federation", exact=True)
            expect(create).to_be_enabled()
            create.click()
            expect(device_card(page, NUM_DEVICES - 1)).to_contain_text("not connected", timeout=300_000)
            assert (certificates / "ca.crt").exists() and (certificates / "supernode-2.pub").exists()
            step("federation created: SuperLink up with TLS and node authentication, run submitted")

            nodes = start_supernodes(tmp_path / "nodes", certificates, superlink_port)
            for device_id in range(NUM_DEVICES):
                expect(device_card(page, device_id)).to_contain_text(" s ago", timeout=120_000)
            step("three SuperNodes joined")

            page.get_by_role("button", name="Start", exact=True).click()
            wait_for(lambda: "training" in device_card(page, 2).inner_text(), "round 1 training", timeout=240)
            device_card(page, 2).get_by_text("Device 2").click()  # mid-run: it sits out round 2
            expect(device_card(page, 2)).to_contain_text("leaves after this round")  # its update is on its way
            expect(page.get_by_text(f"{NUM_DEVICES - 1} of {NUM_DEVICES} devices active")).to_be_visible()
            wait_for(lambda: "Finished" in metric_value(page, "Status"), "the run to finish", timeout=300)
            expect(device_card(page, 2)).to_contain_text("inactive")
            assert metric_value(page, "Completed rounds").startswith("2")
            step("two rounds trained, device 2 deactivated mid-run")

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            full_page_screenshot(page, SCREENSHOT)
            if os.environ.get("FL_UPDATE_DOCS") == "1":
                shutil.copy(SCREENSHOT, PROJECT_ROOT / "docs" / "deployment.png")
            page.get_by_text("Recorded runs", exact=True).first.click()
            expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()
            step("screenshot; the run is recorded")
        except Exception:
            print("[browser] page at the failure:\n" + page.inner_text("body")[-4000:])
            page.screenshot(path=str(tmp_path / "failure.png"))
            raise
        finally:
            if nodes is not None:
                nodes.stop(timeout=10)
    runs = list((tmp_path / "runs").rglob("*"))
    assert runs, "the run store is empty"
