"""Bring-your-own-data sources read into one Dataset: image folders, CSV, npz, the checked IDX files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data.datasets import load_dataset
from data.errors import DataError
from data.sources import load_source
from data.spec import Preprocessing, SourceOptions
from tests.make_data import classification_csv, colour_only_folder, idx_folder, linear_csv


def test_class_folders_keep_colour_and_pick_a_size_from_the_data(tmp_path):
    root = colour_only_folder(tmp_path / "colours", per_class=20, side=12)
    messages = []
    dataset = load_source(str(root), options=SourceOptions(), progress=messages.append)
    assert dataset.class_names == ("green", "red")
    assert dataset.preprocessing.color == "rgb" and dataset.preprocessing.image_size == 12
    assert dataset.x_train.shape[1:] == (12, 12, 3) and dataset.input_shape == (12, 12, 3)
    assert len(dataset.y_train) + len(dataset.y_test) == 40
    assert sorted(np.bincount(dataset.y_test)) == [4, 4]  # stratified 20% of each class
    grey = load_source(str(root), options=SourceOptions(color="grey", image_size=8))
    assert grey.x_train.shape[1:] == (8, 8) and grey.preprocessing.color == "grey"


def test_train_test_and_per_device_layouts(tmp_path):
    for part in ("train", "test"):
        colour_only_folder(tmp_path / "split" / part, per_class=5, side=10, seed=len(part))
    split = load_source(str(tmp_path / "split"))
    assert len(split.y_train) == 10 and len(split.y_test) == 10 and split.train_groups is None
    for device in ("alice", "bob", "carol"):
        colour_only_folder(tmp_path / "natural" / "devices" / device, per_class=4, side=10)
    colour_only_folder(tmp_path / "natural" / "server", per_class=3, side=10)
    natural = load_source(str(tmp_path / "natural"))
    assert natural.group_names == ("alice", "bob", "carol")
    assert np.bincount(natural.train_groups).tolist() == [8, 8, 8] and len(natural.y_test) == 6


def test_corrupt_files_are_skipped_counted_and_named(tmp_path):
    root = colour_only_folder(tmp_path / "c", per_class=10, side=10)
    (root / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    good = root / "green" / "0.png"
    (root / "green" / "truncated.png").write_bytes(good.read_bytes()[:60])
    Image.new("L", (30, 20), 128).save(root / "green" / "odd-size-grey.png")
    messages = []
    dataset = load_source(str(root), progress=messages.append)
    warning = next(m for m in messages if m.startswith("Warning: skipped"))
    assert "broken.png" in warning and "truncated.png" in " ".join(messages)
    assert len(dataset.y_train) + len(dataset.y_test) == 21  # 20 good + the odd-size grey image
    assert any("sizes" in m for m in messages)


def test_csv_regression_standardises_with_training_statistics(tmp_path):
    path = linear_csv(tmp_path / "lin.csv")
    dataset = load_source(str(path), options=SourceOptions(target="y", device_column="phone"))
    spec = dataset.preprocessing
    assert dataset.task == "regression" and dataset.num_classes == 1 and spec.feature_names == ("x",)
    assert dataset.group_names == tuple(f"phone-{d}" for d in range(5))
    raw_x = dataset.x_train[:, 0] * spec.std[0] + spec.mean[0]
    assert abs(raw_x.mean() - spec.mean[0]) < 1e-4 and abs(dataset.x_train.mean()) < 1e-4  # train statistics
    assert Preprocessing.from_json(spec.to_json()) == spec


def test_csv_classification_one_hot_and_task_override(tmp_path):
    path = classification_csv(tmp_path / "iris.csv")
    dataset = load_source(str(path), options=SourceOptions(target="species"))
    assert dataset.task == "classification" and dataset.class_names == ("setosa", "versicolor", "virginica")
    assert "tone=warm" in dataset.preprocessing.feature_names and "site=north" in dataset.preprocessing.feature_names
    integer = load_source(str(path), options=SourceOptions(target="a", task="regression"))
    assert integer.task == "regression"


def test_npz_with_and_without_a_test_split(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x_train=rng.normal(size=(50, 4)), y_train=rng.integers(0, 2, 50))
    dataset = load_source(str(tmp_path / "a.npz"))
    assert dataset.task == "classification" and len(dataset.y_test) == 10 and dataset.x_train.dtype == np.float32
    images = rng.integers(0, 256, (30, 9, 9, 3)).astype(np.uint8)
    np.savez(tmp_path / "b.npz", x_train=images, y_train=rng.normal(size=30), x_test=images[:5],
             y_test=rng.normal(size=5))
    regression = load_source(str(tmp_path / "b.npz"))
    assert regression.task == "regression" and regression.input_shape == (9, 9, 3)


def test_well_formed_idx_files_of_ones_own_still_load(tmp_path):
    dataset = load_dataset("fashion-mnist", idx_folder(tmp_path / "fashion-mnist"))
    assert dataset.x_train.shape == (20, 28, 28)


def test_mnist_passed_as_fashion_mnist_is_detected(tmp_path, data_dir):
    (tmp_path / "fashion-mnist").symlink_to(f"{data_dir}/mnist")
    with pytest.raises(DataError, match="is the mnist data set, not fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path)
