"""The Flower ServerApp: the engine's round loop (``engine.rounds.RoundRunner``) over real SuperNodes.

The same loop as in-process (select, instruct, collect, check, aggregate with
the strategy and its privacy wrapper, evaluate on the server's test set),
with :class:`flower_app.transport.GridTransport` carrying the messages. After
each round, when the run config sets ``results-file``, one JSON line is
appended there (``flower_app.records.round_record``)::

    {"run_id": 7, "round": 1, "global_accuracy": 0.71, "global_loss": 0.83,
     "seconds": 22.4, "train_seconds": 22.3, "eval_seconds": 0.1,
     "selected": [0, 1], "deactivated": [2], "bytes_down": ..., "bytes_up": ..., "raw_bytes_up": ...,
     "epsilon": null, "sampling_rate": 1.0,
     "devices": {"0": {"node_id": 1234, "samples": 450, "train_loss": ..., "train_accuracy": ...,
                       "received_accuracy": ..., "loss": ..., "accuracy": ...,
                       "seconds": 1.1, "bytes_up": ..., "setup_seconds": 9.8},
                 "1": {...}},
     "problems": [{"partition_id": 3, "node_id": 99, "kind": "rejected", "reason": "..."}],
     "refused_nodes": {"4412": "the query reply has no 'node' config record"},
     "confusion": [[...], ...]}

When ``runs-dir`` is set (a folder inside the server's runs folder, ``flower_app.output_dir.runs_root``),
the run is also recorded in that run store
(``engine.store.RunStore``: rounds and checkpoints), so it can be resumed,
compared and exported like an in-process run.

When the run config sets ``weights-file``, the global model after each round
is also saved there as an ``.npz`` (``round`` plus ``arr_0``, ``arr_1``, ...),
replaced atomically *before* that round's JSON line is appended, so a reader
that sees round N can load at least round N's model. (The dashboard needs none
of these files: it plays the ServerApp itself, see ``flower_app.serverapp_link``.)

``devices`` is keyed by partition id (what node configs and ``deactivated``
use); ``loss``/``accuracy`` are the trained model on the device's local test
split, ``received_*`` the global model it received, ``seconds`` its local
training and ``setup_seconds`` its ClientApp's start-up. NaN and inf become
null. Partition ids in ``deactivated`` or in ``deactivated-file`` (re-read
before every round) are never selected. A device whose reply is unusable is
that round's problem (``problems``); a node whose query reply is unusable is
never selected (``refused_nodes``); neither ends the run.
"""

from __future__ import annotations

import json
import os
import sqlite3
from logging import INFO, WARNING
from pathlib import Path

import keras
import numpy as np
from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from devices.messages import Weights
from devices.trainer import ModelReplica, OptimizerSpec
from engine.composition import strategy_state
from engine.config import FederationConfig
from engine.models import ModelRegistry
from engine.results import DeviceStatus, RunStatus
from engine.async_rounds import round_runner
from engine.setup import server_test_set, stored_samples
from engine.store import RunStore, StoreError
from engine.strategies import build_strategy
from flower_app import records
from flower_app.byod import server_dataset
from flower_app.config import server_settings
from flower_app.output_dir import confined_path, output_dir
from flower_app.polling import PollingGrid, poll_seconds
from flower_app.stack_log import log_stacks_on_signal
from flower_app.transport import GridTransport

app = ServerApp()


class CentralEvaluator:
    """The server's held-out test set and a model replica to score global models on it."""

    def __init__(self, config: FederationConfig, registry: ModelRegistry | None = None, run_config=None):
        registry = registry or ModelRegistry(config.model_weights)
        # The server's own data source; it must be the one the run config's preprocessing declares (flower_app.byod)
        dataset = server_dataset(config.dataset, config.data_dir, config.source_options, run_config or {})
        self.test_set = server_test_set(dataset, config)
        keras.utils.set_random_seed(config.seed)  # the in-process engine's initial global model
        self.replica = ModelReplica(
            lambda: registry.build(config.model, dataset.input_shape, dataset.num_classes),  # a file: named by the user
            OptimizerSpec(config.optimizer, config.momentum),
            samples=stored_samples(dataset.x_test, dataset.task),
        )
        self.initial_weights: Weights = self.replica.get_weights()


def append_json_line(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, allow_nan=False) + "\n")


def weights_file(run_config) -> Path | None:
    """Where to save the global model after each round (None: nowhere), inside the output folder."""
    path = str(run_config.get("weights-file", "") or "").strip()
    return confined_path("weights-file", path, output_dir()) if path else None


def save_weights(path: Path, server_round: int, weights: Weights) -> None:
    """Write ``weights`` to ``path`` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as handle:
        np.savez(handle, *[np.asarray(w) for w in weights], round=np.int64(server_round))
    os.replace(temporary, path)


def known_devices(nodes, min_devices: int) -> int:
    """The federation's size as far as this ServerApp knows: partition ids 0 to the highest seen (``nodes``: partition
    id -> node id), at least ``min_devices``. ``flwr run`` is never told the count: SuperNodes announce their
    partitions when they join."""
    return max(max(nodes, default=-1) + 1, min_devices)


def log_status(device_id: int, status: DeviceStatus, detail: str) -> None:
    if detail and status in (DeviceStatus.FAILED, DeviceStatus.REJECTED, DeviceStatus.DROPPED):
        log(WARNING, "partition %s %s: %s", device_id, status.value, detail)


class RunRecorder:
    """Where each finished round goes: the weights file, the results file and the run store."""

    def __init__(self, context: Context, config: FederationConfig, results_file: Path | None,
                 runs_dir: Path | None = None):
        self.run_id = context.run_id
        self.config = config
        self.results_file = results_file
        self.weights_path = weights_file(context.run_config)
        self.store = RunStore(runs_dir) if runs_dir else None  # confined by server_settings
        self.store_run_id: str | None = str(context.run_config.get("store-run-id", "") or "").strip() or None
        self._lease = None
        if self.store is not None and self.store_run_id is not None:
            self._mark_running()
        for what, where in (("one JSON line per round", results_file), ("the global model", self.weights_path),
                            ("the run", self.store and self.store.root)):
            if where is not None:
                log(INFO, "Writing %s to %s", what, where)

    def record(self, weights: Weights, result, transport: GridTransport, deactivated, strategy) -> None:
        if self.weights_path is not None:
            save_weights(self.weights_path, result.round, weights)
        if self.results_file is not None:
            append_json_line(self.results_file, records.round_record(
                result, transport.nodes, deactivated, self.run_id, transport.extras, transport.roster.refused))
        if self.store is not None:
            try:
                self._store_round(weights, result, transport, strategy)
            except (OSError, sqlite3.Error, StoreError) as error:  # as in-process: reported, training goes on
                log(WARNING, "Could not record round %d in %s: %s", result.round, self.store.root, error)

    def _store_round(self, weights: Weights, result, transport: GridTransport, strategy) -> None:
        if self.store_run_id is None:
            config = self.config.with_changes(num_devices=known_devices(transport.nodes, self.config.min_devices))
            self.store_run_id = self.store.create_run(config, label=f"Flower run {self.run_id}")
            self._mark_running()
        self.store.record_round(self.store_run_id, result, weights, strategy_state(strategy),
                                private=self.config.secure_aggregation)

    def _mark_running(self) -> None:
        """Hold the run's lease while training (else it would be listed as interrupted), then say running."""
        try:
            self._lease = self.store.lease(self.store_run_id)
        except StoreError as error:
            log(WARNING, "%s", error)
        self.store.set_status(self.store_run_id, RunStatus.RUNNING.value)

    def end(self, status: RunStatus) -> None:
        if self.store is not None and self.store_run_id is not None:
            self.store.set_status(self.store_run_id, status.value)
        if self._lease is not None:
            self._lease.release()
            self._lease = None


@app.main()
def main(grid: Grid, context: Context) -> None:
    log_stacks_on_signal()  # kill -USR1: where a stuck run waits, in its log
    grid = PollingGrid(grid, poll_seconds())  # Flower's deployment grid waits 3 s between pulls
    settings = server_settings(context.run_config)  # refuses file names outside the output and runs folders
    weights_file(context.run_config)  # the same, before anything is loaded
    config = settings.federation
    evaluator = CentralEvaluator(config, run_config=context.run_config)
    transport = GridTransport(grid, settings)
    strategy = build_strategy(config.strategy, config.strategy_params)
    runner = round_runner(strategy)(config, transport, evaluator.replica, strategy, evaluator.test_set, log_status)
    recorder = RunRecorder(context, config, settings.results_file, settings.runs_dir)
    weights = evaluator.initial_weights
    try:
        for server_round in range(1, settings.rounds + 1):
            active, deactivated = transport.active_partitions(config.min_devices)
            log(INFO, "Round %d: %d active partition(s) %s", server_round, len(active), active)
            strategy.bind(known_devices(transport.nodes, config.min_devices))  # SCAFFOLD's |S|/N, as in-process
            weights, result = runner.run(server_round, weights, active, lambda steps: None)
            log(INFO, "Round %d: global accuracy %.4f, loss %.4f, %.2f s, %d device(s), %d problem(s)",
                result.round, result.global_accuracy, result.global_loss, result.seconds, len(result.devices),
                len(result.problems))
            recorder.record(weights, result, transport, deactivated, strategy)
    except BaseException:
        recorder.end(RunStatus.FAILED)
        raise
    recorder.end(RunStatus.FINISHED)
