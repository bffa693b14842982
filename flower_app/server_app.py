"""The Flower ServerApp: the engine's rounds over real SuperNodes, observable round by round.

Each round :class:`flower_app.strategy.EngineStrategy` selects, broadcasts,
validates and aggregates; then the new global model is evaluated on the
server's test set (``engine.federation.server_test_set``, the slice the
in-process engine uses) and, when the run config sets ``results-file``, one
JSON line is appended there (:meth:`RoundReport.to_json_dict`)::

    {"run_id": 7, "round": 1, "global_accuracy": 0.71, "global_loss": 0.83,
     "seconds": 22.4, "train_seconds": 22.3, "eval_seconds": 0.1,
     "selected": [0, 1], "deactivated": [2], "bytes_down": ..., "bytes_up": ...,
     "devices": {"0": {"node_id": 1234, "samples": 450, "train_loss": ..., "train_accuracy": ...,
                       "received_loss": ..., "received_accuracy": ..., "loss": ..., "accuracy": ...,
                       "steps": 15, "seconds": 1.1, "bytes_up": ..., "setup_seconds": 9.8},
                 "1": {...}},
     "problems": [{"partition_id": 3, "node_id": 99, "kind": "rejected", "reason": "..."}],
     "confusion": [[...], ...]}

When ``FL_FLOWER_WEIGHTS_FILE`` is set in the ServerApp's environment (or a
``weights-file`` run-config key exists), the global model after each round is
also saved there as an ``.npz`` (``round`` plus ``arr_0``, ``arr_1``, ...),
replaced atomically *before* that round's JSON line is appended, so a reader
that sees round N can load at least round N's model
(``flower_app.backend.FlowerFederation.predict`` does).

``devices`` is keyed by partition id (what node configs and ``deactivated``
use); ``loss``/``accuracy`` are the trained model on the device's local test
split, ``received_*`` the global model it received, ``seconds`` its local
training and ``setup_seconds`` its ClientApp's start-up. NaN becomes null.
Partition ids in ``deactivated`` or in ``deactivated-file`` (re-read before
every round) are never selected.
"""

from __future__ import annotations

import json
import os
from logging import INFO
from pathlib import Path

import keras
import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from data.datasets import load_dataset
from devices.messages import Weights
from devices.trainer import ModelReplica, OptimizerSpec
from engine.config import FederationConfig
from engine.federation import server_test_set
from engine.metrics import confusion_matrix
from engine.models import ModelRegistry
from engine.strategies import build_strategy
from flower_app import records
from flower_app.config import server_settings
from flower_app.output_dir import confined_path, output_dir
from flower_app.polling import PollingGrid, poll_seconds
from flower_app.strategy import EngineStrategy

app = ServerApp()

WEIGHTS_FILE_VARIABLE = "FL_FLOWER_WEIGHTS_FILE"


class CentralEvaluator:
    """The server's held-out test set and a model replica to score global models on it."""

    def __init__(self, config: FederationConfig, registry: ModelRegistry | None = None):
        registry = registry or ModelRegistry()
        dataset = load_dataset(config.dataset, config.data_dir)
        self.test_set = server_test_set(dataset, config)
        keras.utils.set_random_seed(config.seed)  # the in-process engine's initial global model
        self.replica = ModelReplica(
            lambda: registry.build(config.model, dataset.image_shape, dataset.num_classes),
            OptimizerSpec(config.optimizer, config.momentum),
        )
        self.initial_weights: Weights = self.replica.get_weights()

    def evaluate(self, weights: Weights) -> tuple[float, float, np.ndarray]:
        """Loss, accuracy and confusion matrix (as ``RoundRunner.evaluate``)."""
        self.replica.set_weights(weights)
        loss, accuracy, predicted = self.replica.evaluate(self.test_set.x, self.test_set.y)
        return loss, accuracy, confusion_matrix(self.test_set.y, predicted, self.test_set.num_classes)


def append_json_line(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, allow_nan=False) + "\n")


def weights_file(run_config) -> Path | None:
    """Where to save the global model after each round (None: nowhere), inside the output folder."""
    path = str(run_config.get("weights-file", "") or os.environ.get(WEIGHTS_FILE_VARIABLE, "")).strip()
    return confined_path("weights-file", path, output_dir()) if path else None


def save_weights(path: Path, server_round: int, weights: Weights) -> None:
    """Write ``weights`` to ``path`` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as handle:
        np.savez(handle, *[np.asarray(w) for w in weights], round=np.int64(server_round))
    os.replace(temporary, path)


@app.main()
def main(grid: Grid, context: Context) -> None:
    grid = PollingGrid(grid, poll_seconds())  # Flower's deployment grid waits 3 s between pulls
    settings = server_settings(context.run_config)  # refuses file names outside the output folder
    weights_path = weights_file(context.run_config)
    config = settings.federation
    evaluator = CentralEvaluator(config)
    strategy = EngineStrategy(settings, build_strategy(config.strategy, config.strategy_params))
    if settings.results_file is not None:
        log(INFO, "Writing one JSON line per round to %s", settings.results_file)
    if weights_path is not None:
        log(INFO, "Saving the global model after each round to %s", weights_path)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy, confusion = evaluator.evaluate(records.to_weights(arrays))
        if server_round > 0:  # round 0 is the initial model, before any training
            report = strategy.finish_round(loss, accuracy, confusion)
            log(INFO, "Round %d: global accuracy %.4f, loss %.4f, %.2f s, %d device(s), %d problem(s)",
                report.round, accuracy, loss, report.seconds, len(report.updates), len(report.problems))
            if weights_path is not None:
                save_weights(weights_path, server_round, records.to_weights(arrays))
            if settings.results_file is not None:
                append_json_line(settings.results_file, report.to_json_dict(context.run_id))
        return MetricRecord({"accuracy": float(accuracy), "loss": float(loss)})

    strategy.start(
        grid=grid,
        initial_arrays=records.to_arrays(evaluator.initial_weights),
        num_rounds=settings.rounds,
        timeout=settings.round_timeout,
        evaluate_fn=evaluate,
    )
