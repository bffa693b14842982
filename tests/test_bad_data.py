"""Every bad data set gets one line saying what is wrong, exit code 2, and no traceback (issues 12, 13)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.cli import main
from tests.make_data import classification_csv, colour_only_folder, idx_bytes, idx_folder, linear_csv


def empty_folder(tmp: Path) -> list[str]:
    (tmp / "empty").mkdir()
    return ["--dataset", str(tmp / "empty")]


def class_without_images(tmp: Path) -> list[str]:
    colour_only_folder(tmp / "f", per_class=3, side=8)
    (tmp / "f" / "blue").mkdir()
    (tmp / "f" / "blue" / "notes.txt").write_text("no images here")
    return ["--dataset", str(tmp / "f")]


def only_corrupt_files(tmp: Path) -> list[str]:
    for name in ("a", "b"):
        (tmp / "f" / name).mkdir(parents=True)
        (tmp / "f" / name / "x.jpg").write_bytes(b"garbage")
    return ["--dataset", str(tmp / "f")]


def single_class_folder(tmp: Path) -> list[str]:
    colour_only_folder(tmp / "f", per_class=3, side=8)
    for path in (tmp / "f" / "green").iterdir():
        path.unlink()
    (tmp / "f" / "green").rmdir()
    return ["--dataset", str(tmp / "f")]


def csv_rows(tmp: Path, **columns) -> str:
    pd.DataFrame(columns).to_csv(tmp / "t.csv", index=False)
    return str(tmp / "t.csv")


def csv_without_target_column(tmp: Path) -> list[str]:
    return ["--dataset", str(linear_csv(tmp / "l.csv")), "--target", "price"]


def csv_without_target_option(tmp: Path) -> list[str]:
    return ["--dataset", str(linear_csv(tmp / "l.csv"))]


def csv_with_nan(tmp: Path) -> list[str]:
    return ["--dataset", csv_rows(tmp, x=[1.0, np.nan, 3.0] * 5, y=[1.0, 2.0, 3.0] * 5), "--target", "y"]


def csv_text_column(tmp: Path) -> list[str]:
    return ["--dataset", csv_rows(tmp, name=[f"n{i}" for i in range(30)], y=np.arange(30.0) / 7), "--target", "y"]


def csv_single_class(tmp: Path) -> list[str]:
    return ["--dataset", csv_rows(tmp, x=np.arange(20.0), y=["cat"] * 20), "--target", "y"]


def csv_text_target_regression(tmp: Path) -> list[str]:
    return ["--dataset", str(classification_csv(tmp / "c.csv")), "--target", "species", "--task", "regression"]


def fewer_samples_than_devices(tmp: Path) -> list[str]:
    return ["--dataset", csv_rows(tmp, x=np.arange(10.0) / 3, y=np.arange(10.0) / 7), "--target", "y",
            "--devices", "20"]


def natural_without_devices(tmp: Path) -> list[str]:
    return ["--dataset", str(linear_csv(tmp / "l.csv")), "--target", "y", "--partition", "natural"]


def label_skew_on_regression(tmp: Path) -> list[str]:
    return ["--dataset", str(linear_csv(tmp / "l.csv")), "--target", "y", "--partition", "dirichlet"]


def no_such_path(tmp: Path) -> list[str]:
    return ["--dataset", str(tmp / "nowhere")]


def unsupported_file(tmp: Path) -> list[str]:
    (tmp / "data.txt").write_text("1,2,3")
    return ["--dataset", str(tmp / "data.txt")]


def broken_idx(change) -> callable:
    """A valid IDX folder with ``change(folder)`` applied to it."""

    def make(tmp: Path) -> list[str]:
        folder = idx_folder(tmp / "fashion-mnist")
        change(folder)
        return ["--data-dir", str(tmp)]

    return make


def overwrite(name: str, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
VALID = idx_bytes("images", np.zeros((20, 28, 28)))

CASES = {
    "empty folder": (empty_folder, "holds no class folders"),
    "class folder without images": (class_without_images, "has no images"),
    "only corrupt files": (only_corrupt_files, "no readable images"),
    "a single class": (single_class_folder, "single class"),
    "csv without the target column": (csv_without_target_column, "has no target 'price'"),
    "csv without --target": (csv_without_target_option, "needs a target column (--target COLUMN)"),
    "csv with NaN": (csv_with_nan, "missing value"),
    "csv text column": (csv_text_column, "is text with 30 distinct values"),
    "csv single class": (csv_single_class, "single value"),
    "text target as regression": (csv_text_target_regression, "not numeric"),
    "fewer samples than devices": (fewer_samples_than_devices, "cannot be split across 20 devices"),
    "natural partition without devices": (natural_without_devices, "needs per-device data"),
    "label skew on a regression": (label_skew_on_regression, "a regression supports iid"),
    "no such path": (no_such_path, "neither a built-in name"),
    "unsupported file": (unsupported_file, "use a folder, .csv or .npz"),
    "idx truncated gzip": (broken_idx(lambda f: (f / TRAIN_IMAGES).write_bytes(
        (f / TRAIN_IMAGES).read_bytes()[:200])), "truncated"),
    "idx not gzip": (broken_idx(overwrite(TRAIN_IMAGES, VALID)), "not a gzip file"),
    "idx bad magic": (broken_idx(overwrite(TRAIN_IMAGES, gzip.compress(b"\0\0\x09\x99" + VALID[4:]))),
                      "magic number"),
    "idx empty": (broken_idx(overwrite(TRAIN_IMAGES, gzip.compress(b""))), "empty or too short"),
    "idx short payload": (broken_idx(overwrite(TRAIN_IMAGES, gzip.compress(VALID[:-500]))), "announces 20 items"),
    "idx wrong image size": (broken_idx(overwrite(TRAIN_IMAGES, gzip.compress(
        idx_bytes("images", np.zeros((20, 32, 32)))))), "holds 32x32 images"),
    "idx md5 mismatch": (broken_idx(overwrite("MD5SUMS.txt", ("0" * 32 + f"  {TRAIN_IMAGES}\n").encode())),
                         "does not match"),
    "idx labels do not match images": (broken_idx(overwrite("train-labels-idx1-ubyte.gz", gzip.compress(
        idx_bytes("labels", np.zeros(7))))), "20 train images but 7 train labels"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_gets_one_line_and_exit_2(case, tmp_path, capsys):
    make, expected = CASES[case]
    argv = ["run", "--rounds", "1", "--no-save", *make(tmp_path)]
    try:
        code = main(argv, out=io.StringIO())
    except SystemExit as exit:  # argparse's own error path
        code = exit.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    last = err.splitlines()[-1]
    assert expected in last, err
    assert "Traceback" not in err and len(last) < 400


def test_flower_takes_own_data_and_model_files(tmp_path):
    """One's own data and every model run on Flower too (tests/test_flower_byod.py trains them)."""
    from engine.config import FederationConfig
    from flower_app.backend import unsupported

    folder = colour_only_folder(tmp_path / "f", per_class=2, side=8)
    assert unsupported(FederationConfig(dataset=str(folder), model="linear", num_devices=2)) == []
    assert unsupported(FederationConfig(model="mlp", num_devices=2)) == []


def test_messages_name_settings_as_the_cli_or_the_dashboard_knows_them(tmp_path):
    """The CLI says --devices, the dashboard the setting's label (both from engine.settings)."""
    from data.sources import load_source
    from data.spec import SourceOptions
    from engine.config import FederationConfig
    from engine.data_fit import data_problem
    from engine.settings import reword

    path = str(linear_csv(tmp_path / "phones.csv", devices=3, per_device=20))
    grouped = load_source(path, options=SourceOptions(target="y", device_column="phone"))
    config = FederationConfig(dataset=path, target="y", device_column="phone", partition="natural", num_devices=5)
    assert data_problem(grouped, config).endswith("use --devices 3")
    assert data_problem(grouped, config, audience="dashboard").endswith('set "Number of devices" to 3')
    plain = load_source(path, options=SourceOptions(target="y"))
    assert data_problem(plain, config, audience="dashboard").endswith('a CSV\'s "Device column"')
    assert data_problem(plain, config).endswith("a CSV's --device-column")
    assert reword(FederationConfig, "needs a target column (--target COLUMN); use --lr 0.1", "dashboard") == \
        'needs a target column ("Target column"); use "Learning rate" 0.1'
    assert reword(FederationConfig, "unknown --nothing X", "dashboard") == "unknown --nothing X"
