"""Flower SuperNodes on their own data (flower_app.byod): colour image folders and regression CSVs.

Real processes: a SuperLink, two SuperNodes each with its own generated files
(node config ``data``), and the ServerApp on the server's own data source,
whose preprocessing the run config declares. Tiny data, one or two rounds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data.errors import DataError
from data.sources import encode_source, load_source
from data.spec import SourceOptions
from flower_app.byod import decode_spec, encode_spec, node_model, run_preprocessing, server_dataset
from flower_app.config import node_spec

COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200)}
MODEL_FILE = '''import keras

TASK = "regression"


def build(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Dense(num_classes)], name="mine")
'''


def colour_folder(root, count: int, side: int, suffix: str, seed: int):
    """Classes that differ only in colour, with noise; ``side`` and ``suffix`` vary between nodes."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}{suffix}")
    return root


def regression_csv(path, rows: int, seed: int):
    """y = 5x + 3 + noise, plus a text column to one-hot."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, rows)
    pd.DataFrame({"x": x, "kind": rng.choice(["a", "b"], rows), "y": 5 * x + 3 + rng.normal(0, 0.1, rows)}
                 ).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("byod-flower")
    return {
        "server_images": colour_folder(root / "server-images", 20, 20, ".png", 0),
        "node_images": [colour_folder(root / "node-0", 24, 20, ".png", 1),
                        colour_folder(root / "node-1", 24, 40, ".jpg", 2)],
        "server_csv": regression_csv(root / "server.csv", 200, 3),
        "node_csv": [regression_csv(root / f"node-{i}.csv", 150, 4 + i) for i in range(2)],
        "model_file": root / "my_model.py",
        "root": root,
    }


def test_a_node_encodes_its_own_files_with_the_servers_preprocessing(files):
    server = load_source(str(files["server_images"]))
    spec = decode_spec(run_preprocessing(server))
    assert spec.color == "rgb" and spec.image_size == 20 and spec.input_shape == (20, 20, 3)
    x, y = encode_source(str(files["node_images"][1]), spec)  # 40x40 JPEGs -> the server's 20x20 colour
    assert x.shape == (48, 20, 20, 3) and x.dtype == np.uint8 and sorted(set(y.tolist())) == [0, 1]
    csv = load_source(str(files["server_csv"]), options=SourceOptions(target="y"))
    table = decode_spec(run_preprocessing(csv))
    rows, values = encode_source(str(files["node_csv"][0]), table)
    assert rows.shape == (150, 3) and values.dtype == np.float32  # x standardised with the server's statistics
    assert rows[:, 0].mean() == pytest.approx((pd.read_csv(files["node_csv"][0])["x"].mean() - table.mean[0])
                                              / table.std[0], abs=1e-4)
    assert run_preprocessing(load_source("fashion-mnist")) == ""  # the built-in sets need none


def test_what_does_not_fit_the_federation_is_a_one_line_reason(files, tmp_path):
    spec = decode_spec(run_preprocessing(load_source(str(files["server_images"]))))
    colour_folder(tmp_path / "other", 3, 20, ".png", 9)
    (tmp_path / "other" / "green").mkdir()
    Image.new("RGB", (20, 20), "green").save(tmp_path / "other" / "green" / "0.png")
    with pytest.raises(DataError, match="green are not classes of this federation"):
        encode_source(str(tmp_path / "other"), spec)
    with pytest.raises(DataError, match="cannot feed this federation"):
        encode_source(str(files["node_csv"][0]), spec)
    with pytest.raises(DataError, match="not a preprocessing"):
        decode_spec("not base64!")
    other = load_source(str(files["node_images"][0]))  # another data set than the one declared
    with pytest.raises(DataError, match="not that of the server's data set"):
        server_dataset(str(files["server_csv"]), None, SourceOptions(target="y"),
                       {"preprocessing": encode_spec(decode_spec(run_preprocessing(other)))})


def test_a_node_runs_no_model_file_the_run_config_names(files):
    assert node_model("mlp", None) == "mlp"
    with pytest.raises(ValueError, match="runs no code the run config names"):
        node_model("/srv/server/model.py", None)
    assert node_model("/srv/server/model.py", "/home/me/model.py") == "/home/me/model.py"
    spec = node_spec({"data": "/d/mine.csv", "model-file": "/home/me/model.py"}, {}, node_id=4)
    assert (spec.partition_id, spec.source, spec.model_file) == (4, "data", "/home/me/model.py")


def test_a_node_refuses_its_own_files_without_the_runs_preprocessing(files):
    from flower_app.client_app import declared_samples

    spec = node_spec({"data": str(files["node_csv"][0])}, {"dataset": str(files["server_csv"])}, node_id=1)
    with pytest.raises(DataError, match="declares no preprocessing"):
        declared_samples(spec)


# -- real processes on 127.0.0.1 ---------------------------------------------------------------------
def deploy(workdir, node_files, run_config, model_file=None):
    from flower_app.loopback import LocalDeployment

    nodes = [{"partition-id": i, "data": str(path), **({"model-file": str(model_file)} if model_file else {})}
             for i, path in enumerate(node_files)]
    with LocalDeployment(workdir, len(nodes), node_configs=nodes, secure=False) as local:
        outcome = local.run({**run_config, "results-file": "rounds.jsonl"}, timeout=240)
        logs = "\n".join(local.log(name)[-2000:] for name in ("supernode-0", "clientapp-0"))
    return outcome, f"{outcome.output[-3000:]}\n{logs}"


@pytest.mark.timeout(300)
def test_supernodes_train_on_their_own_colour_folders(files, tmp_path_factory):
    server = str(files["server_images"])
    outcome, context = deploy(tmp_path_factory.mktemp("flower-colour"), files["node_images"], {
        "dataset": server, "preprocessing": run_preprocessing(load_source(server)), "model": "mlp",
        "num-server-rounds": 1, "min-devices": 2, "batch-size": 8, "learning-rate": 0.01,
    })
    assert outcome.returncode == 0 and [r["round"] for r in outcome.rounds] == [1], context
    record = outcome.rounds[0]
    assert record["problems"] == [] and sorted(record["devices"]) == ["0", "1"], context
    # every image of each node, less its local test split (10 %, rounded up): the 40x40 JPEGs too
    assert [d["samples"] for d in record["devices"].values()] == [43, 43]
    assert record["global_accuracy"] > 0.9, record  # the classes differ only in colour: chance is 0.5


@pytest.mark.timeout(300)
def test_supernodes_fit_a_regression_on_their_own_csvs_with_their_own_model_file(files, tmp_path_factory):
    files["model_file"].write_text(MODEL_FILE)
    server = str(files["server_csv"])
    csv = load_source(server, options=SourceOptions(target="y"))
    outcome, context = deploy(tmp_path_factory.mktemp("flower-regression"), files["node_csv"], {
        "dataset": server, "target": "y", "preprocessing": run_preprocessing(csv), "model": str(files["model_file"]),
        "num-server-rounds": 2, "min-devices": 2, "optimizer": "sgd", "momentum": 0.0, "learning-rate": 0.2,
        "batch-size": 16, "local-epochs": 2,
    }, model_file=files["model_file"])
    assert outcome.returncode == 0 and [r["round"] for r in outcome.rounds] == [1, 2], context
    last = outcome.rounds[-1]
    assert last["problems"] == [], context
    assert last["global_r2"] > 0.99 and last["global_loss"] < 0.1, last  # global_loss is the MSE
    assert last["global_mae"] is not None and last["global_accuracy"] is None  # NaN accuracy -> null
