"""Real federated training on one's own data: colour JPEG folders, colour-only classes, CSV regression and
classification with natural partitions, MobileNetV2 from scratch, a user's model file (issue 12)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from data.sources import load_source
from data.spec import SourceOptions
from engine.config import FederationConfig
from engine.federation import Federation
from engine.model_defaults import training_defaults
from tests.conftest import PROJECT_ROOT
from tests.make_data import classification_csv, colour_only_folder, fashion_jpeg_folder, linear_csv


def train(dataset_path: str, rounds: int = 2, **settings):
    """Run a federation on the data at ``dataset_path`` with the model's own defaults; the final snapshot."""
    config = FederationConfig(dataset=dataset_path, rounds=rounds, **settings)
    dataset = load_source(dataset_path, options=config.source_options)
    defaults = training_defaults(config.model, dataset.task)
    config = config.with_changes(optimizer=defaults.optimizer, learning_rate=defaults.learning_rate,
                                 momentum=defaults.momentum)
    federation = Federation(config, dataset=dataset)
    return federation, federation.run_to_end()


def test_cnn_learns_fashion_mnist_written_as_colour_jpegs(tmp_path, fashion):
    root = fashion_jpeg_folder(tmp_path / "shop", fashion, count=600, side=20)
    federation, snapshot = train(str(root), rounds=3, model="cnn", num_devices=3, image_size=16)
    assert federation.dataset.preprocessing.color == "rgb" and federation.dataset.input_shape == (16, 16, 3)
    assert snapshot.latest.global_accuracy > 0.4, snapshot.message  # chance: 0.1


def test_colour_pipeline_separates_classes_that_differ_only_in_colour(tmp_path):
    root = colour_only_folder(tmp_path / "hues", per_class=60, side=12)
    _, colour = train(str(root), model="mlp", num_devices=2)
    assert colour.latest.global_accuracy > 0.95
    _, grey = train(str(root), model="mlp", num_devices=2, color="grey")
    assert grey.latest.global_accuracy < 0.8  # equal luminance: grey cannot tell red from green


def test_federated_linear_regression_recovers_w_and_b(tmp_path):
    path = str(linear_csv(tmp_path / "phones.csv", devices=5))
    federation, snapshot = train(path, rounds=3, model="linear", target="y", device_column="phone",
                                 partition="natural", num_devices=5)
    kernel, bias = federation.global_weights
    spec = federation.dataset.preprocessing
    w = float(kernel[0, 0]) / spec.std[0]  # back to the raw feature's scale
    b = float(bias[0]) - w * spec.mean[0]
    assert abs(w - 5) < 0.1 and abs(b - 3) < 0.1, (w, b)
    last = snapshot.latest
    assert last.is_regression and last.global_r2 > 0.99 and last.global_mae < 0.2
    assert len(last.devices) == 5 and all(np.isfinite(d.loss) for d in last.devices)


@pytest.mark.parametrize("model", ["mlp", "linear"])
def test_tabular_classification_with_a_string_label_and_a_device_column(tmp_path, model):
    path = str(classification_csv(tmp_path / "plants.csv"))
    federation, snapshot = train(path, rounds=3, model=model, target="species", device_column="site",
                                 partition="natural", num_devices=3)
    assert federation.dataset.group_names == ("east", "north", "south")
    assert snapshot.latest.global_accuracy > 0.85, snapshot.message


def test_mobilenetv2_from_scratch_trains_and_exports(tmp_path):
    from engine.export import export_model
    from engine.predict import load_classifier

    root = colour_only_folder(tmp_path / "hues", per_class=12, side=32)
    federation, snapshot = train(str(root), rounds=1, model="mobilenetv2", num_devices=2, batch_size=8, workers=1)
    assert snapshot.latest is not None and np.isfinite(snapshot.latest.global_loss), snapshot.message
    path = export_model("mobilenetv2", federation.global_weights, "keras", tmp_path / "m.keras",
                        input_shape=federation.dataset.input_shape, num_classes=2)
    probabilities = load_classifier(path).predict(federation.dataset.x_test[:2].astype(np.float32) / 255)
    assert probabilities.shape == (2, 2) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)


USER_MODEL = '''
import keras

TASK = "classification"
DEFAULTS = {"optimizer": "adam", "learning_rate": 0.01}


def build(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(16, activation="relu"), keras.layers.Dense(num_classes)],
                            name="mine")
'''


def test_a_user_model_file_from_the_cli(tmp_path):
    (tmp_path / "my_model.py").write_text(USER_MODEL)
    root = colour_only_folder(tmp_path / "hues", per_class=30, side=10)
    result = subprocess.run(
        [sys.executable, "-m", "engine", "run", "--dataset", str(root), "--model", str(tmp_path / "my_model.py"),
         "--devices", "2", "--rounds", "2", "--json", "--no-save"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr
    assert '"final_accuracy": 1.0' in result.stdout or '"final_accuracy": 0.9' in result.stdout, result.stdout


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def test_export_carries_the_preprocessing_and_predict_uses_it(tmp_path, runs_dir):
    from PIL import Image

    from data.prepare import read_sidecar
    from engine.store import RunStore

    root = colour_only_folder(tmp_path / "hues", per_class=40, side=12)
    store = RunStore(runs_dir)
    config = FederationConfig(dataset=str(root), model="mlp", num_devices=2, rounds=2)
    federation = Federation(config, store=store)
    federation.run_to_end()
    exported = run_module("engine", "export", federation.run_id, "--format", "keras", "--output",
                          str(tmp_path / "hues.keras"), "--runs-dir", str(runs_dir))
    assert exported.returncode == 0, exported.stderr
    spec = read_sidecar(tmp_path / "hues.keras")
    assert spec.color == "rgb" and spec.image_size == 12 and spec.class_names == ("green", "red")
    Image.new("RGB", (300, 200), (210, 5, 5)).save(tmp_path / "red-photo.jpg")  # a big colour upload
    predicted = run_module("engine.predict", str(tmp_path / "hues.keras"), str(tmp_path / "red-photo.jpg"))
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.startswith(f"{tmp_path / 'red-photo.jpg'}: red ("), predicted.stdout


def test_a_tabular_row_predicts_its_value(tmp_path):
    from data.prepare import table_input
    from engine.export import export_model
    from engine.predict import load_classifier

    import pandas as pd

    federation, _ = train(str(linear_csv(tmp_path / "l.csv")), rounds=3, model="linear", target="y",
                          num_devices=2)
    path = export_model("linear", federation.global_weights, "tflite", tmp_path / "l.tflite",
                        preprocessing=federation.preprocessing)
    row = table_input(pd.DataFrame({"x": [1.0], "phone": ["phone-0"]}), federation.preprocessing)
    value = float(load_classifier(path).predict(row)[0, 0])
    assert abs(value - 8.0) < 0.3, value  # 5 * 1 + 3


def test_a_regression_run_on_a_csv_resumes_and_exports_to_int8(tmp_path):
    """A run whose data set is a path resumes from the store (the path read again), and its regression model
    exports to a fully quantised TFLite model that still predicts y = 5x + 3 (the CLI, in this process)."""
    import io

    import pandas as pd

    from data.prepare import read_sidecar, table_input
    from engine.cli import main
    from engine.predict import load_classifier
    from engine.store import RunStore

    csv = str(linear_csv(tmp_path / "l.csv", devices=2, per_device=150))
    runs = str(tmp_path / "runs")
    out = io.StringIO()
    common = ["--runs-dir", runs]
    assert main(["run", "--dataset", csv, "--target", "y", "--model", "linear", "--devices", "2", "--rounds", "2",
                 "--json", *common], out=out) == 0
    (run_id,) = [run.run_id for run in RunStore(runs).list_runs()]
    assert main(["resume", run_id, "--rounds", "1", "--json", *common], out=out) == 0
    history = RunStore(runs).load_history(run_id)
    assert [r.round for r in history] == [1, 2, 3] and history[-1].global_r2 > 0.99
    destination = tmp_path / "l-int8.tflite"
    assert main(["export", run_id, "--format", "tflite-int8", "--output", str(destination), *common], out=out) == 0
    classifier = load_classifier(destination)
    assert classifier.input_dtype == np.int8 and classifier.output_dtype == np.int8
    spec = read_sidecar(destination)
    assert spec.task == "regression" and spec.feature_names[0] == "x"
    rows = table_input(pd.DataFrame({"x": [0.0, 1.0, 3.0], "phone": ["phone-0"] * 3}), spec)
    np.testing.assert_allclose(classifier.predict(rows)[:, 0], [3.0, 8.0, 18.0], atol=0.3)  # int8 steps
