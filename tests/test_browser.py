"""End-to-end test of the dashboard in headless Chromium (Playwright), against a real `streamlit run`.

It starts the app on a free port with a small setup (4 CNN devices, 2,000 training
samples, rounds until stopped), creates the federation, toggles devices, trains,
uploads a rendered test-set photo, deactivates a device mid-run and stops.
Screenshots go to tests/output/ (git-ignored): dashboard.png is the README picture.
Uses the system Chromium at /usr/bin/chromium; never downloads a browser.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from data.datasets import load_dataset  # noqa: E402
from data.preprocess import render_on_background  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
OUTPUT = PROJECT_ROOT / "tests" / "output"
DATA_DIR = os.environ.get("FL_DATA_DIR") or str((PROJECT_ROOT / ".." / "shared" / "datasets").resolve())
APP_ENV = {
    "FL_DATA_DIR": DATA_DIR,
    "FL_DEFAULT_DEVICES": "4",
    "FL_DEFAULT_MODEL": "cnn",  # ~0.5 s rounds: the screenshot shows a run in progress, not hundreds of rounds
    "FL_DEFAULT_TRAIN_SAMPLES": "2000",
    "FL_DEFAULT_TEST_SAMPLES": "1000",
    "FL_DEFAULT_ROUNDS": "0",  # until stopped, so the run is still live when a device is deactivated
    "FL_AUTO_CREATE": "0",  # the test presses "Create federation" itself
    "TF_CPP_MIN_LOG_LEVEL": "2",
}
WIDTH = 1400
SERVER_START_SECONDS = 60
STEP_MS = 45_000

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no system Chromium at {CHROMIUM}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def wait_until_serving(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"streamlit did not serve {url} within {SERVER_START_SECONDS} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def output_dir() -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)  # git-ignored (tests/output/ in .gitignore)
    return OUTPUT


@contextlib.contextmanager
def streamlit_server(output_dir: Path, env: dict[str, str]):
    """`streamlit run app/main.py` with ``env`` on a free port; the whole process group is killed afterwards."""
    port = free_port()
    log = output_dir / "streamlit.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port),
             "--server.headless", "true"],
            cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://localhost:{port}"
        wait_until_serving(process, url, log)
        yield url
    finally:
        kill_group(process)


def kill_group(process: subprocess.Popen) -> None:
    """End ``process`` and its process group: SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
            process.wait(wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


@pytest.fixture
def app_url(output_dir):
    with streamlit_server(output_dir, APP_ENV) as url:
        yield url


@contextlib.contextmanager
def browser_tab(url: str, timeout_ms: int = STEP_MS):
    """A headless Chromium tab on ``url`` whose steps wait up to ``timeout_ms``; the browser closes on the way out."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=timeout_ms)  # the first federation imports TensorFlow: allow for a slow machine
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_context(viewport={"width": WIDTH, "height": 1000}).new_page()
            tab.set_default_timeout(timeout_ms)
            tab.goto(url)
            yield tab
        finally:
            browser.close()


@pytest.fixture
def page(app_url):
    with browser_tab(app_url) as tab:
        yield tab


@pytest.fixture
def product_photo(tmp_path) -> tuple[Path, str, tuple[str, ...]]:
    """A test-set image as a large RGB JPEG of a dark object on white, its true class, and all class names."""
    dataset = load_dataset("fashion-mnist", DATA_DIR)
    path = tmp_path / "product.jpg"
    render_on_background(dataset.x_test[0], scale=14).save(path, format="JPEG", quality=92)
    return path, dataset.class_names[int(dataset.y_test[0])], dataset.class_names


class Steps:
    """Prints how long each step of the scenario took (shown with ``pytest -s``)."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        print(f"[browser] {name}: {now - self.last:.1f} s (total {now - self.started:.1f} s)", flush=True)
        self.last = now


def metric_value(page, label: str) -> str:
    return page.locator('[data-testid="stMetric"]', has_text=label).locator('[data-testid="stMetricValue"]') \
        .inner_text()


def completed_rounds(page) -> int:
    return int(metric_value(page, "Completed rounds").split("/")[0])


def wait_for(condition, what: str, timeout: float = STEP_MS / 1000) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # elements are replaced while the page refreshes; try again
            pass
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


def wait_for_script_idle(page, timeout_ms: int = STEP_MS) -> None:
    """Wait until no script run is in progress: Streamlit shows its status widget ("Running...") meanwhile."""
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=timeout_ms)


def upload_and_expect(page, uploader: str, path: Path, result, text, attempts: int = 3) -> None:
    """Give ``path`` to the file input under ``uploader`` and wait until ``result`` contains ``text``.

    A full rerun that is still drawing the page can replace the uploader while the browser is sending the file,
    and the upload is then forgotten (the dropzone shows no file). Uploading again is what a user would do; a
    prediction that never appears still fails after the last attempt.
    """
    from playwright.sync_api import expect

    for attempt in range(1, attempts + 1):
        wait_for_script_idle(page)
        page.locator(f"{uploader} input[type=file]").set_input_files(str(path))
        try:
            expect(result).to_contain_text(text, timeout=60_000)
            return
        except AssertionError:
            kept = page.locator(f'{uploader} [data-testid="stFileChipName"]').count() > 0
            if kept or attempt == attempts:  # the file arrived and still no result: a real failure
                raise


def device_card(page, device_id: int):
    return page.locator(f".st-key-device-{device_id}")


def full_page_screenshot(page, path: Path) -> None:
    """Streamlit scrolls inside its main container, so grow the viewport to the content before shooting."""
    measure = """() => {
        const block = document.querySelector('[data-testid="stMainBlockContainer"]');
        const main = document.querySelector('[data-testid="stMain"]');
        return Math.ceil(Math.max(main.scrollHeight, block.getBoundingClientRect().bottom + 40));
    }"""
    page.mouse.move(WIDTH - 20, 700)  # an empty margin: no hover effects (anchors, tooltips) in the picture
    height = 0
    for _ in range(4):  # charts re-layout after a resize, which can change the height again
        measured = page.evaluate(measure)
        if measured <= height:
            break
        height = measured
        page.set_viewport_size({"width": WIDTH, "height": height})
        page.wait_for_timeout(1200)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": WIDTH, "height": 1000})


def test_dashboard_end_to_end(page, app_url, product_photo, output_dir):
    from playwright.sync_api import expect

    step = Steps()
    # Create the federation from the (small) default setup.
    create = page.get_by_role("button", name="Create federation", exact=True)
    expect(create).to_be_enabled()
    create.click()
    expect(device_card(page, 3)).to_be_visible()
    expect(page.locator('[data-testid="stMetric"]', has_text="Status")).to_contain_text("Ready")

    step("page loaded, federation created")
    # Bulk actions: deactivate, then activate every device.
    page.get_by_role("button", name="Deactivate all", exact=True).click()
    for device_id in range(4):
        expect(device_card(page, device_id)).to_contain_text("inactive")
    page.get_by_role("button", name="Activate all", exact=True).click()
    for device_id in range(4):
        expect(device_card(page, device_id)).to_contain_text("idle")
    expect(page.get_by_text("4 of 4 devices active")).to_be_visible()

    step("bulk actions")
    # Train until the live charts show at least two rounds, without any user interaction.
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator('[data-testid="stMetric"]', has_text="Status")).to_contain_text("Running")
    wait_for(lambda: completed_rounds(page) >= 2, "two completed rounds")
    expect(page.get_by_text("Global model on the server's test set").first).to_be_visible()
    expect(page.get_by_text("Each device's accuracy on its own held-out data").first).to_be_visible()
    wait_for(lambda: page.locator('[data-testid="stPlotlyChart"]').count() >= 6, "all six dashboard charts")
    step("two rounds trained")

    # Deactivate a device mid-run: it turns inactive while the other three keep training.
    rounds_before = completed_rounds(page)
    device_card(page, 1).get_by_text("Device 1").click()
    expect(device_card(page, 1)).to_contain_text("inactive")
    expect(page.get_by_text("3 of 4 devices active")).to_be_visible()
    wait_for(lambda: completed_rounds(page) >= rounds_before + 2, "rounds after deactivating device 1")
    expect(device_card(page, 1)).to_contain_text("inactive")
    expect(page.locator('[data-testid="stMetric"]', has_text="Status")).to_contain_text("Running")
    step("device deactivated mid-run")

    # Upload a product photo: the model's input, the predicted class and the probability chart appear.
    photo, true_name, class_names = product_photo
    page.get_by_text("Upload an image", exact=True).click()
    result = page.locator(".st-key-prediction-upload")
    upload_and_expect(page, ".st-key-predict", photo, result, re.compile(r"Predicted: \S"))  # not the sidebar's
    headline = result.locator("h4").inner_text()
    assert any(headline.endswith(name) for name in class_names), headline
    expect(result.locator('[data-testid="stPlotlyChart"]')).to_be_visible()
    expect(result.get_by_text("Class probabilities").first).to_be_visible()
    expect(page.get_by_text("What the model sees: 28×28 grayscale")).to_be_visible()
    step(f"prediction shown: {headline!r} for a {true_name!r} photo")

    full_page_screenshot(page, output_dir / "dashboard.png")
    page.locator(".st-key-predict").screenshot(path=str(output_dir / "prediction.png"))
    step("screenshots")

    # Another tab is another session with its own (not yet created) federation.
    other_tab = page.context.new_page()
    other_tab.goto(app_url)
    expect(other_tab.get_by_role("button", name="Create federation", exact=True)).to_be_enabled()
    other_tab.close()
    step("second tab has its own session")

    page.get_by_role("button", name="Stop", exact=True).click()
    expect(page.locator('[data-testid="stMetric"]', has_text="Status")).to_contain_text("Stopped")
    expect(page.get_by_role("button", name="Continue", exact=True)).to_be_enabled()
    step("stopped")

    # The run was recorded: the Runs page lists it and opens its charts.
    page.get_by_text("Recorded runs", exact=True).first.click()
    expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()
    expect(page.get_by_text("Compare runs (overlay their accuracy)")).to_be_visible()
    page.screenshot(path=str(output_dir / "runs.png"))
    page.get_by_text("Live training", exact=True).first.click()
    expect(page.locator('[data-testid="stMetric"]', has_text="Status")).to_contain_text("Stopped")
    step("runs page lists the run")
