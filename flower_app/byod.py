"""Flower runs on one's own data: the preprocessing every process shares, and each SuperNode's own files.

Two ways for a SuperNode to get data, both with the checks of :mod:`data.sources`:

- ``partition-id`` / ``num-partitions`` (node config): the node loads the
  run's ``dataset`` (a built-in name or a path that exists on the node, e.g.
  the dashboard's own machine) with the run's source options, and keeps its
  partition, exactly as the in-process engine cuts it.
- ``data`` (node config): a folder, CSV or ``.npz`` of the node's own; every
  sample in it is the device's (its local test split is cut off as usual).

Where the model's shape and the preprocessing come from: the **server's own
data source** (the run's ``dataset``, read where the run is started), declared
in the run config's ``preprocessing`` key (:func:`run_preprocessing`, the
:class:`data.spec.Preprocessing` as base64 JSON: no quotes or spaces to
survive in ``--run-config``). The run config, not a message, because it is
fixed for the whole run, reaches every process before its first message, and
is set by the user who starts the run; a SuperNode encodes its files with it
(the same image side, colour mode, class order, feature statistics and
one-hot categories as the server's model), so nodes whose files differ in size,
mode or classes still feed one model. The source options alone (image size,
colour, target) would not do: class order and feature statistics depend on
the data. The ServerApp checks that the declared preprocessing is its own
data's (:func:`server_dataset`), and builds the model from it.

Model files: code from outside is never trusted. The ServerApp loads the run's
``model`` file only on the machine where the run is started (the user named
it). A SuperNode never runs a file the run config names: with a model file it
needs its own ``model-file`` node config (a local copy its owner trusts), and
refuses to train without one (:func:`node_model`). Nothing sends a model's
code between processes, only weights.

``python -m flower_app.byod --dataset SERVER_DATA [--target y ...]`` (the
engine CLI's options) prints the ``preprocessing`` value for ``flwr run --run-config``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import sys
from dataclasses import replace
from typing import Any, Mapping

import numpy as np

from data.datasets import Dataset
from data.errors import DataError
from data.sources import encode_source, is_builtin, load_source
from data.spec import Preprocessing, SourceOptions

from flower_app.config import NODE_MODEL_FILE

PREPROCESSING_KEY = "preprocessing"  # flower_app.config.DATA_DEFAULTS


def encode_spec(spec: Preprocessing) -> str:
    """``spec`` as a run-config value: base64 of its compact JSON."""
    text = json.dumps(json.loads(spec.to_json()), separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii")


def decode_spec(value: object) -> Preprocessing | None:
    """The preprocessing a run-config value declares (None: none declared); DataError when unreadable."""
    text = str(value or "").strip()
    if not text:
        return None
    try:
        return Preprocessing.from_json(base64.urlsafe_b64decode(text.encode("ascii")).decode("utf-8"))
    except (binascii.Error, UnicodeError, ValueError, TypeError, KeyError) as error:
        raise DataError(f"run-config key {PREPROCESSING_KEY} is not a preprocessing written by "
                        f"python -m flower_app.byod ({type(error).__name__})") from None


def dataset_spec(dataset: Dataset) -> Preprocessing:
    """What a model trained on ``dataset`` takes (the engine's ``Federation.preprocessing``)."""
    return replace(dataset.preprocessing, input_shape=dataset.input_shape, task=dataset.task,
                   class_names=dataset.class_names)


def run_preprocessing(dataset: Dataset) -> str:
    """The run-config ``preprocessing`` value for a run on ``dataset`` ("" for the built-in sets)."""
    builtin = is_builtin(dataset.name) and dataset.preprocessing.kind == "idx"
    return "" if builtin else encode_spec(dataset_spec(dataset))


def server_dataset(name: str, data_dir: str | None, options: SourceOptions, run_config: Mapping[str, Any]) -> Dataset:
    """The ServerApp's data set; DataError when the run config declares another data set's preprocessing."""
    dataset = load_source(name, data_dir, options)
    declared = decode_spec(run_config.get(PREPROCESSING_KEY, ""))
    if declared is not None and declared != dataset_spec(dataset):
        own = dataset_spec(dataset)
        differs = [key for key in own.__dataclass_fields__ if getattr(own, key) != getattr(declared, key)]
        raise DataError(f"the run config's {PREPROCESSING_KEY} is not that of the server's data set {name} "
                        f"(they differ in {', '.join(differs)}); write it again with python -m flower_app.byod")
    return dataset


@functools.lru_cache(maxsize=2)
def node_arrays(source: str, declared: str) -> tuple[np.ndarray, np.ndarray]:
    """A SuperNode's own data at ``source``, encoded with the run's declared preprocessing (cached per process)."""
    spec = decode_spec(declared)
    if spec is None:
        raise DataError(f"this node trains on its own data ({source}), and the run config declares no "
                        f"{PREPROCESSING_KEY}: start the run with {PREPROCESSING_KEY}=$(python -m flower_app.byod "
                        "--dataset SERVER_DATA ...) so every node encodes its files like the server's model expects")
    x, y = encode_source(source, spec)
    if not len(y):
        raise DataError(f"{source} holds no samples")
    return x, y


def node_model(run_model: str, model_file: str | None) -> str:
    """The model a SuperNode builds: a built-in name, or its *own* model file when the run uses a file."""
    if not run_model.endswith(".py"):
        return run_model
    if not model_file:
        raise ValueError(f"the run's model is the file {run_model}; a SuperNode runs no code the run config names: "
                         f"give it a local copy you trust with --node-config '{NODE_MODEL_FILE}=\"PATH\"'")
    return model_file


def main(argv: list[str] | None = None) -> int:
    """Print the ``preprocessing`` value for a run on ``--dataset`` (the engine's options; only the data's matter)."""
    from engine.cli_options import OneLineParser, add_setting_options, setting_values
    from engine.config import FederationConfig

    parser = OneLineParser(prog="python -m flower_app.byod", description=(
        f"Print the run-config {PREPROCESSING_KEY} value for a Flower run on --dataset (the server's own data "
        "source), read with the same options as python -m engine."))
    add_setting_options(parser, FederationConfig)
    config = FederationConfig(**setting_values(parser.parse_args(argv), FederationConfig))
    try:
        print(run_preprocessing(load_source(config.dataset, config.data_dir, config.source_options)))
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
