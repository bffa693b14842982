"""Exporting trained models (Keras, SavedModel, TFLite float and int8) and the standalone classifier.

Real TensorFlow on real Fashion-MNIST: the MLP and the CNN are trained for one
epoch on 5,000 training images, exported in every format and compared with the
in-memory model on 1,000 test images. Run with ``-s`` to see the measured
agreement, accuracy and file sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import PROJECT_ROOT

TRAIN_SAMPLES = 5000
TEST_SAMPLES = 1000


def run_predict(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.predict", *map(str, args)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def disk_size(path: Path) -> int:
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size


def leftovers(folder: Path) -> list[str]:
    """Temporary names the exporter uses (hidden, in the destination's folder)."""
    return sorted(entry.name for entry in folder.iterdir() if entry.name.startswith("."))


@pytest.fixture(scope="module")
def exported(fashion, tmp_path_factory):
    """``exported(name)``: a model trained 1 epoch on real data, exported in every format (cached)."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = train_and_export(name, fashion, tmp_path_factory.mktemp(f"export-{name}"))
        return cache[name]

    return get


@pytest.fixture(params=["mlp", "cnn"])
def trained(request, exported):
    return exported(request.param)


def train_and_export(name: str, fashion, folder: Path) -> dict:
    import keras

    from engine.export import FORMATS, build_inference_model, default_filename, export_model
    from engine.models import ModelRegistry

    keras.utils.set_random_seed(0)
    model = ModelRegistry().build(name, fashion.image_shape, fashion.num_classes)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = fashion.x_train[:TRAIN_SAMPLES, ..., None].astype(np.float32) / 255.0
    model.fit(x, fashion.y_train[:TRAIN_SAMPLES], epochs=1, batch_size=32, verbose=0)
    weights = [np.array(v.numpy()) for v in model.weights]  # as ModelReplica.get_weights gives them

    x_test = fashion.x_test[:TEST_SAMPLES].astype(np.float32) / 255.0
    inference = build_inference_model(name, weights)
    reference = np.asarray(inference(x_test[..., None], training=False))
    logits = np.asarray(model(x_test[..., None], training=False))
    np.testing.assert_allclose(reference, keras.ops.convert_to_numpy(keras.ops.softmax(logits)), atol=1e-6)

    paths = {
        fmt: export_model(name, weights, fmt, folder / default_filename(name, fmt),
                          representative_images=fashion.x_train[:TRAIN_SAMPLES])
        for fmt in FORMATS
    }
    sizes = ", ".join(f"{fmt} {disk_size(path) / 1024:.0f} KB" for fmt, path in paths.items())
    print(f"\n[{name}] sizes: {sizes}")
    return dict(name=name, weights=weights, inference=inference, x_test=x_test, reference=reference,
                folder=folder, paths=paths)


def test_exports_are_written_with_no_temporary_files_left(trained):
    assert all(path.exists() for path in trained["paths"].values())
    assert (trained["paths"]["saved_model"] / "saved_model.pb").is_file()
    assert leftovers(trained["folder"]) == []


def test_tflite_float_agrees_with_keras(trained, fashion):
    from engine.predict import TFLiteClassifier, load_classifier

    classifier = load_classifier(trained["paths"]["tflite"])
    assert isinstance(classifier, TFLiteClassifier) and classifier.input_dtype == np.float32
    probabilities = classifier.predict(trained["x_test"])
    reference = trained["reference"]
    assert probabilities.shape == reference.shape
    agreement = np.mean(probabilities.argmax(1) == reference.argmax(1))
    accuracy = np.mean(probabilities.argmax(1) == fashion.y_test[:TEST_SAMPLES])
    keras_accuracy = np.mean(reference.argmax(1) == fashion.y_test[:TEST_SAMPLES])
    print(f"\n[{trained['name']}] tflite float: agreement {agreement:.3f}, accuracy {accuracy:.3f} "
          f"(keras {keras_accuracy:.3f}), max |dp| {np.abs(probabilities - reference).max():.2e}")
    assert agreement >= 0.99
    np.testing.assert_allclose(probabilities, reference, atol=1e-4)


def test_tflite_int8_is_fully_quantised_and_close_to_keras(trained, fashion):
    from engine.predict import load_classifier

    classifier = load_classifier(trained["paths"]["tflite-int8"])
    # Full-integer I/O as microcontrollers run it; the documented quantisation parameters.
    assert classifier.input_dtype == np.int8 and classifier.output_dtype == np.int8
    in_scale, in_zero = classifier.input_quantization
    out_scale, out_zero = classifier.output_quantization
    assert in_scale == pytest.approx(1 / 255) and in_zero == -128
    assert out_scale == pytest.approx(1 / 256) and out_zero == -128
    pixels = np.arange(256)
    quantised = classifier._quantize((pixels / 255.0).astype(np.float32))
    np.testing.assert_array_equal(quantised, pixels - 128)  # a uint8 pixel p is exactly p - 128

    probabilities = classifier.predict(trained["x_test"])
    reference = trained["reference"]
    labels = fashion.y_test[:TEST_SAMPLES]
    agreement = np.mean(probabilities.argmax(1) == reference.argmax(1))
    accuracy = np.mean(probabilities.argmax(1) == labels)
    keras_accuracy = np.mean(reference.argmax(1) == labels)
    print(f"\n[{trained['name']}] tflite int8: agreement {agreement:.3f}, accuracy {accuracy:.3f} "
          f"(keras {keras_accuracy:.3f}), max |dp| {np.abs(probabilities - reference).max():.3f}")
    assert agreement >= 0.90
    assert accuracy >= keras_accuracy - 0.03
    assert np.abs(probabilities.sum(1) - 1).max() < 0.05  # dequantised softmax, steps of 1/256


def test_tflite_classifier_also_runs_models_with_a_dynamic_batch(exported, tmp_path):
    import tensorflow as tf

    from engine.predict import TFLiteClassifier

    trained = exported("mlp")
    trained["inference"].export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False,
                                input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
    path = tmp_path / "dynamic.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm")).convert())
    classifier = TFLiteClassifier(path)
    for count in (50, 7, 50):  # the input tensor is resized to each batch
        np.testing.assert_allclose(classifier.predict(trained["x_test"][:count]), trained["reference"][:count],
                                   atol=1e-4)


def test_saved_model_and_keras_file_reload_to_the_same_probabilities(trained):
    from engine.predict import KerasClassifier, SavedModelClassifier, load_classifier

    with pytest.raises(ValueError, match="--allow-saved-model"):  # a SavedModel runs its own graph: opt-in
        load_classifier(trained["paths"]["saved_model"])
    for fmt, kind in (("keras", KerasClassifier), ("saved_model", SavedModelClassifier)):
        classifier = load_classifier(trained["paths"][fmt], allow_saved_model=True)
        assert isinstance(classifier, kind)
        np.testing.assert_allclose(classifier.predict(trained["x_test"]), trained["reference"], rtol=1e-5, atol=1e-6)


def test_exporting_over_an_existing_export_replaces_it_completely(trained, tmp_path):
    from engine.export import export_keras, export_saved_model, export_tflite
    from engine.predict import load_classifier

    model, x = trained["inference"], trained["x_test"][:50]
    fresh = trained["paths"]["tflite"]

    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(os.urandom(3 * disk_size(fresh)))  # larger than the model: no stale tail may survive
    export_tflite(model, tflite)
    # Not byte-identical to the first export: tensor names carry Keras's process-wide layer counters.
    assert abs(disk_size(tflite) - disk_size(fresh)) < 1024
    np.testing.assert_allclose(load_classifier(tflite).predict(x), trained["reference"][:50], atol=1e-4)

    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"old")
    export_keras(model, keras_file)
    np.testing.assert_allclose(load_classifier(keras_file).predict(x), trained["reference"][:50], atol=1e-6)

    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "stale.txt").write_text("from an older export")
    export_saved_model(model, saved)
    assert not (saved / "stale.txt").exists() and (saved / "saved_model.pb").is_file()
    np.testing.assert_allclose(load_classifier(saved, allow_saved_model=True).predict(x), trained["reference"][:50],
                               atol=1e-6)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", ["keras", "saved_model"])
def test_a_failed_export_leaves_the_old_export_and_no_debris(fmt, trained, tmp_path, monkeypatch):
    import keras

    from engine.export import export_keras, export_saved_model

    def half_written(model, target, *args, **kwargs):  # crash part-way through writing
        target = Path(target)
        if fmt == "saved_model":
            target.mkdir()
            (target / "saved_model.pb").write_bytes(b"half")
        else:
            target.write_bytes(b"half")
        raise OSError("disk full")

    if fmt == "keras":
        destination = tmp_path / "model.keras"
        destination.write_bytes(b"previous export")
        monkeypatch.setattr(keras.saving, "save_model", half_written)
        export = export_keras
    else:
        destination = tmp_path / "saved"
        destination.mkdir()
        (destination / "saved_model.pb").write_bytes(b"previous export")
        monkeypatch.setattr(keras.Model, "export", lambda self, path, **kw: half_written(self, path))
        export = export_saved_model
    with pytest.raises(OSError, match="disk full"):
        export(trained["inference"], destination)
    previous = destination / "saved_model.pb" if fmt == "saved_model" else destination
    assert previous.read_bytes() == b"previous export"
    assert leftovers(tmp_path) == []


def test_bad_export_requests_fail_clearly(tmp_path):
    from engine.export import build_inference_model, export_keras, export_model, export_tflite
    from engine.models import ModelRegistry

    weights = ModelRegistry().build("mlp", (28, 28, 1), 10).get_weights()
    with pytest.raises(ValueError, match="unknown export format"):
        export_model("mlp", weights, "onnx", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="do not fit model 'cnn'"):
        build_inference_model("cnn", weights)
    model = build_inference_model("mlp", weights)
    with pytest.raises(ValueError, match="representative_images"):
        export_tflite(model, tmp_path / "m.tflite", int8=True)
    with pytest.raises(ValueError, match=r"\.keras"):
        export_keras(model, tmp_path / "m.h5")
    assert list(tmp_path.iterdir()) == []


def test_predict_command_classifies_a_photo_and_reports_bad_files(exported, fashion, tmp_path):
    from data.preprocess import preprocess_upload, render_on_background
    from engine.predict import load_classifier

    trained = exported("mlp")
    model = trained["paths"]["tflite"]
    photo = tmp_path / "ankle boot photo.jpg"
    render_on_background(fashion.x_test[0]).save(photo, "JPEG")  # 360x360 RGB, dark object on white
    expected = fashion.class_names[int(load_classifier(model).predict(
        preprocess_upload(photo.read_bytes()).pixels[None])[0].argmax())]
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("this is not a picture")

    result = run_predict(model, photo, not_an_image)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{photo}: {expected} (")
    assert f"{not_an_image}: error: The file is not a recognised image" in result.stderr

    result = run_predict(trained["paths"]["tflite-int8"], photo, "--json", "--top", "3")
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)["results"]
    assert entry["file"] == str(photo) and len(entry["predictions"]) == 3
    assert all(p["class"] in fashion.class_names for p in entry["predictions"])

    result = run_predict(tmp_path / "missing.tflite", photo)
    assert result.returncode == 2
    assert "model not found" in result.stderr


def test_the_cli_offers_exactly_the_export_formats():
    from engine.cli import EXPORT_FORMATS
    from engine.export import FORMATS

    assert EXPORT_FORMATS == FORMATS
