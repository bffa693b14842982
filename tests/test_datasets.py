import numpy as np
import pytest

from data import datasets
from data.datasets import DatasetUnavailableError, find_local_folder, load_dataset


def test_reads_both_data_sets_from_the_idx_files(data_dir):
    for name in ("fashion-mnist", "mnist"):
        ds = load_dataset(name, data_dir)
        assert ds.x_train.shape == (60_000, 28, 28) and ds.x_train.dtype == np.uint8
        assert ds.x_test.shape == (10_000, 28, 28)
        assert ds.y_train.shape == (60_000,) and set(np.unique(ds.y_train)) == set(range(10))
        assert ds.num_classes == 10 and ds.image_shape == (28, 28, 1)
    assert load_dataset("fashion-mnist", data_dir).class_names[9] == "Ankle boot"


def test_accepts_the_data_set_folder_itself_or_its_parent(data_dir):
    assert find_local_folder("mnist", data_dir) == find_local_folder("mnist", f"{data_dir}/mnist")


def test_reports_progress_and_reads_fl_data_dir(data_dir, monkeypatch):
    monkeypatch.setenv("FL_DATA_DIR", data_dir)
    messages = []
    load_dataset("mnist", progress=messages.append)
    assert messages and "Reading mnist" in messages[0]


def test_explains_what_to_do_when_neither_local_nor_download_works(tmp_path, monkeypatch):
    def offline(name):
        raise OSError("network is unreachable")

    # The download itself is outside our control; simulate the offline machine it would fail on.
    monkeypatch.setattr(datasets, "_download_with_keras", offline)
    with pytest.raises(DatasetUnavailableError, match="FL_DATA_DIR") as error:
        load_dataset("fashion-mnist", tmp_path)
    assert "connect to the internet" in str(error.value)


def test_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("cifar-1000")
