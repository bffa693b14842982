"""The dashboard on one's own data (AppTest): a colour image folder and a CSV regression with device column."""

from __future__ import annotations

from tests.make_data import colour_only_folder, linear_csv
from tests.test_app import app_env, federation_of, make_app, metric, no_exceptions, plotly_keys, run_until  # noqa: F401


def test_a_colour_folder_trains_and_the_upload_panel_adapts(make_app, app_env, tmp_path):
    root = colour_only_folder(tmp_path / "hues", per_class=30, side=12)
    app_env.setenv("FL_DEFAULT_DATASET", str(root))
    at = make_app().run(timeout=180)  # auto-creates: imports TensorFlow, builds the model
    no_exceptions(at)
    federation = federation_of(at)
    assert federation.preprocessing.color == "rgb" and federation.dataset.class_names == ("green", "red")
    at.button(key="start").click().run()
    run_until(at, lambda s: s.round >= 2)
    at.run()
    assert float(metric(at, "Global accuracy").rstrip("%")) > 90
    assert any("12×12 colour" in c.value for c in at.caption)  # the upload is prepared like the training images


def test_a_csv_regression_from_the_setup_panel(make_app, app_env, tmp_path):
    path = linear_csv(tmp_path / "phones.csv", devices=3, per_device=300)
    app_env.setenv("FL_DEFAULT_DATASET", str(path))
    at = make_app().run(timeout=180)  # auto-creates: imports TensorFlow, builds the model
    no_exceptions(at)
    # a visible one-line notice, no traceback, in the dashboard's words (the setting's label, not the CLI flag)
    assert any('needs a target column ("Target column")' in e.value for e in at.error), [e.value for e in at.error]
    at.text_input(key="setup_target").set_value("y").run()
    at.text_input(key="setup_device_column").set_value("phone").run()
    at.selectbox(key="setup_partition").set_value("natural").run()
    at.selectbox(key="setup_model").set_value("linear").run()
    at.button(key="apply").click().run()
    no_exceptions(at)
    federation = federation_of(at)
    assert federation.config.num_devices == 3 and federation.config.optimizer == "sgd"  # the model's defaults
    at.button(key="start").click().run()
    run_until(at, lambda s: s.round >= 2)
    at.run()
    assert float(metric(at, "Global R²")) > 0.9
    assert {"global_metrics", "device_accuracy", "label_distribution"} <= plotly_keys(at)
    assert any(n.key == "feature_x" for n in at.number_input)  # the feature form of the prediction panel
    assert any("Predicted" in m.value for m in at.markdown)


def test_an_uploaded_zip_and_an_uploaded_csv_become_the_data_set(make_app, app_env, tmp_path):
    from tests.test_data_upload import folder_zip, zipped

    app_env.setenv("FL_AUTO_CREATE", "0")
    at = make_app().run(timeout=180)
    no_exceptions(at)
    root = colour_only_folder(tmp_path / "hues", per_class=12, side=8)
    at.file_uploader(key="setup_upload").set_value(("hues.zip", folder_zip(root), "application/zip")).run()
    at.selectbox(key="setup_model").set_value("mlp").run()
    at.button(key="apply").click().run(timeout=180)  # builds the model
    no_exceptions(at)
    federation = federation_of(at)
    assert federation.dataset.class_names == ("green", "red") and federation.preprocessing.color == "rgb"
    assert federation.config.dataset.endswith("/hues") and "fl-watch-upload-" in federation.config.dataset
    at.file_uploader(key="setup_upload").set_value(("evil.zip", zipped({"../x.png": b"x"}), "application/zip")).run()
    assert any("points outside its folder" in e.value for e in at.error), [e.value for e in at.error]
    csv = linear_csv(tmp_path / "phones.csv", devices=2, per_device=40).read_bytes()
    at.file_uploader(key="setup_upload").set_value(("phones.csv", csv, "text/csv")).run()
    at.text_input(key="setup_target").set_value("y").run()
    at.selectbox(key="setup_model").set_value("linear").run()
    at.button(key="apply").click().run(timeout=180)  # builds the model
    no_exceptions(at)
    federation = federation_of(at)
    assert federation.dataset.task == "regression" and federation.config.dataset.endswith("phones.csv")
