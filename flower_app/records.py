"""Our messages <-> Flower records: the only translation between the two worlds.

Down: ``TrainInstructions`` -> an ``ArrayRecord`` (the global weights) and a
``ConfigRecord`` (round, epochs, batch size, learning rate, seed, FedProx's mu).
Up: ``DeviceUpdate`` -> an ``ArrayRecord`` (the new weights) and a
``MetricRecord`` (``num-examples``, ``partition-id`` and every ``DeviceMetrics``
field, with dashes: ``train-loss``, ``local-accuracy`` ...).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from devices.messages import DeviceMetrics, DeviceUpdate, TrainInstructions, Weights

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NODE = "node"  # query replies: which partition a node holds

NUM_EXAMPLES = "num-examples"
PARTITION_ID = "partition-id"
METRIC_FIELDS = tuple(field.name for field in dataclasses.fields(DeviceMetrics))


def _dashed(name: str) -> str:
    return name.replace("_", "-")


def to_arrays(weights: Weights) -> ArrayRecord:
    return ArrayRecord([np.asarray(array) for array in weights])


def to_weights(arrays: ArrayRecord) -> Weights:
    return [np.asarray(array) for array in arrays.to_numpy_ndarrays()]


def instructions_content(instructions: TrainInstructions, arrays: ArrayRecord | None = None) -> RecordDict:
    """A train message's content (pass ``arrays`` to reuse an already-built global ArrayRecord)."""
    config = ConfigRecord(
        {
            "server-round": int(instructions.server_round),
            "local-epochs": int(instructions.local_epochs),
            "batch-size": int(instructions.batch_size),
            "learning-rate": float(instructions.learning_rate),
            "seed": int(instructions.seed),
            "proximal-mu": float(instructions.proximal_mu),
        }
    )
    return RecordDict({ARRAYS: arrays if arrays is not None else to_arrays(instructions.weights), CONFIG: config})


def instructions_from(content: RecordDict) -> TrainInstructions:
    config = content.config_records[CONFIG]
    return TrainInstructions(
        server_round=int(config["server-round"]),
        weights=to_weights(content.array_records[ARRAYS]),
        local_epochs=int(config["local-epochs"]),
        batch_size=int(config["batch-size"]),
        learning_rate=float(config["learning-rate"]),
        seed=int(config["seed"]),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
    )


def update_content(update: DeviceUpdate, extras: Mapping[str, float] | None = None) -> RecordDict:
    """A train reply's content; ``extras`` (e.g. ``setup_seconds``) travel as further metrics."""
    metrics: dict[str, int | float] = {NUM_EXAMPLES: int(update.num_samples), PARTITION_ID: int(update.device_id)}
    for name in METRIC_FIELDS:
        value = getattr(update.metrics, name)
        metrics[_dashed(name)] = int(value) if name == "steps" else float(value)
    for name, value in (extras or {}).items():
        metrics[_dashed(name)] = float(value)
    return RecordDict({ARRAYS: to_arrays(update.weights), METRICS: MetricRecord(metrics)})


def update_from(content: RecordDict, device_id: int | None = None) -> DeviceUpdate:
    """Rebuild a ``DeviceUpdate``; ``device_id`` (what the server knows) wins over what the reply claims."""
    metrics = content.metric_records[METRICS]
    known = {NUM_EXAMPLES, PARTITION_ID, *(_dashed(name) for name in METRIC_FIELDS)}
    return DeviceUpdate(
        device_id=int(metrics[PARTITION_ID]) if device_id is None else int(device_id),
        weights=to_weights(content.array_records[ARRAYS]),
        num_samples=int(metrics[NUM_EXAMPLES]),
        metrics=DeviceMetrics(
            **{
                name: int(metrics[_dashed(name)]) if name == "steps" else float(metrics[_dashed(name)])
                for name in METRIC_FIELDS
            }
        ),
        extras={key.replace("-", "_"): value for key, value in metrics.items() if key not in known},
    )


def node_content(partition_id: int, num_partitions: int, source: str) -> RecordDict:
    """A query reply: the partition this node trains on."""
    return RecordDict(
        {NODE: ConfigRecord({PARTITION_ID: int(partition_id), "num-partitions": int(num_partitions), "source": source})}
    )


def node_from(content: RecordDict) -> Mapping[str, object]:
    return dict(content.config_records[NODE])


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: metrics that are NaN (e.g. an empty local test split) become null."""
    return float(value) if math.isfinite(value) else None
