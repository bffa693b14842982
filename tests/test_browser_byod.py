"""The dashboard on a colour image folder in headless Chromium, against a real ``streamlit run``.

A generated colour data set in per-device folders (``ROOT/devices/<phone>/<class>/``,
the Flower demo's layout): the natural partition, the CNN on 24x24 colour
images, six rounds, then a colour photo uploaded to *Try the global model*.
Its screenshot is the README's ``docs/byod-colour.png`` (written to tests/output/;
``FL_UPDATE_DOCS=1`` also copies it to docs/).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.test_browser import (APP_ENV, CHROMIUM, PROJECT_ROOT, Steps, browser_tab, completed_rounds, device_card,
                                full_page_screenshot, metric_value, output_dir, page, streamlit_server,  # noqa: F401
                                upload_and_expect, wait_for, wait_for_script_idle)

FRUIT = {  # class -> (colour, shape): shapes differ a little, colours a lot
    "apple": ((200, 30, 40), "circle"),
    "banana": ((235, 205, 50), "ellipse"),
    "lime": ((90, 180, 50), "circle"),
    "plum": ((100, 40, 120), "circle"),
}
PHONES = 3
ROUNDS = 6  # a finished run: readable per-round charts in the screenshot


def fruit_image(name: str, side: int, rng: np.random.Generator) -> Image.Image:
    """A fruit-coloured blob of random size and place on a light, noisy table."""
    colour, shape = FRUIT[name]
    table = np.clip(rng.normal(225, 12, (side, side, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(table)
    draw = ImageDraw.Draw(image)
    radius = side * rng.uniform(0.22, 0.36)
    x, y = side * rng.uniform(0.35, 0.65, 2)
    tint = tuple(int(np.clip(c + rng.normal(0, 18), 0, 255)) for c in colour)
    squash = 0.55 if shape == "ellipse" else 1.0
    draw.ellipse([x - radius, y - radius * squash, x + radius, y + radius * squash], fill=tint)
    return image


def fruit_folder(root: Path, per_class: int = 24, side: int = 48) -> Path:
    rng = np.random.default_rng(0)
    for phone in range(PHONES):
        for name in FRUIT:
            folder = root / "devices" / f"phone-{phone}" / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                fruit_image(name, side, rng).save(folder / f"{i}.jpg", quality=90)
    for name in FRUIT:
        (root / "server" / name).mkdir(parents=True)
        for i in range(20):
            fruit_image(name, side, rng).save(root / "server" / name / f"{i}.jpg", quality=90)
    return root


@pytest.fixture
def app_url(output_dir, tmp_path):
    """``streamlit run`` on the fruit folder (the natural partition, the CNN, 24x24 colour)."""
    root = fruit_folder(tmp_path / "fruit")
    env = {**APP_ENV, "FL_DEFAULT_DATASET": str(root), "FL_DEFAULT_PARTITION": "natural",
           "FL_DEFAULT_DEVICES": str(PHONES), "FL_DEFAULT_IMAGE_SIZE": "24", "FL_DEFAULT_TRAIN_SAMPLES": "0",
           "FL_DEFAULT_TEST_SAMPLES": "0", "FL_DEFAULT_ROUNDS": str(ROUNDS)}
    with streamlit_server(output_dir, env) as url:
        yield url


pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no system Chromium at {CHROMIUM}")


def test_dashboard_on_a_colour_image_folder(page, output_dir, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=180_000)  # a colour CNN on a machine shared with other TensorFlow jobs
    page.set_default_timeout(180_000)
    step = Steps()
    create = page.get_by_role("button", name="Create federation", exact=True)
    expect(create).to_be_enabled(timeout=120_000)
    create.click()
    expect(device_card(page, PHONES - 1)).to_be_visible(timeout=240_000)  # imports TensorFlow: a loaded machine
    step("federation on the fruit folder created")

    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator('[data-testid="stMetric"]', has_text="Status")).to_contain_text("Finished", timeout=300_000)
    assert completed_rounds(page) == ROUNDS
    step(f"{ROUNDS} rounds trained")

    photo = tmp_path / "apple-photo.jpg"
    fruit_image("apple", 360, np.random.default_rng(7)).save(photo, quality=92)
    result = page.locator(".st-key-prediction-own-upload")
    upload_and_expect(page, ".st-key-predict", photo, result, "Predicted:")
    full_page_screenshot(page, output_dir / "byod-colour.png")
    expect(result).to_contain_text("Predicted: apple")
    expect(page.get_by_text("What the model sees: 24×24")).to_be_visible()
    step("the colour photo is predicted")
    if os.environ.get("FL_UPDATE_DOCS") == "1":
        shutil.copy(output_dir / "byod-colour.png", PROJECT_ROOT / "docs" / "byod-colour.png")
    step("screenshot")


@pytest.fixture
def csv_app_url(output_dir, tmp_path):
    """``streamlit run`` on a CSV of y = 5x + 3 over three phones (natural partition by its device column)."""
    from tests.make_data import linear_csv

    path = linear_csv(tmp_path / "phones.csv", devices=PHONES, per_device=300)
    env = {**APP_ENV, "FL_DEFAULT_DATASET": str(path), "FL_DEFAULT_TARGET": "y", "FL_DEFAULT_DEVICE_COLUMN": "phone",
           "FL_DEFAULT_PARTITION": "natural", "FL_DEFAULT_MODEL": "linear", "FL_DEFAULT_DEVICES": str(PHONES),
           "FL_DEFAULT_TRAIN_SAMPLES": "0", "FL_DEFAULT_TEST_SAMPLES": "0", "FL_DEFAULT_ROUNDS": "3"}
    with streamlit_server(output_dir, env) as url:
        yield url


def test_dashboard_on_a_csv_regression_predicts_a_typed_row(csv_app_url, output_dir):
    from playwright.sync_api import expect

    with browser_tab(csv_app_url, timeout_ms=180_000) as page:
        step = Steps()
        create = page.get_by_role("button", name="Create federation", exact=True)
        expect(create).to_be_enabled(timeout=120_000)
        create.click()
        expect(device_card(page, PHONES - 1)).to_be_visible(timeout=240_000)
        step("federation on the CSV created")

        page.get_by_role("button", name="Start", exact=True).click()
        status = page.locator('[data-testid="stMetric"]', has_text="Status")
        expect(status).to_contain_text("Finished", timeout=300_000)
        assert completed_rounds(page) == 3
        assert float(metric_value(page, "Global R²")) > 0.9  # the regression's own metric, not accuracy
        step("3 rounds of linear regression trained")

        wait_for_script_idle(page)  # typing into a form that a finishing rerun is redrawing can be lost
        typed = page.locator(".st-key-feature_x input")
        typed.fill("2")
        typed.press("Enter")
        result = page.locator(".st-key-prediction-table")
        wait_for(lambda: "Predicted: 1" in result.inner_text(), "a prediction for x = 2", timeout=120)
        predicted = float(result.inner_text().split("Predicted:")[1].split()[0])
        assert abs(predicted - 13.0) < 1.0, predicted  # 5 * 2 + 3
        full_page_screenshot(page, output_dir / "byod-csv.png")
        step("the typed row is predicted")
