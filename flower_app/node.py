"""A SuperNode's local device: its data and a model replica, built once per process.

With Flower's default isolation every message runs in a fresh ClientApp
process and the cache below serves one message. With ``--isolation process``
and the long-lived worker (``scripts/clientapp_worker.py``, the loopback
default) every message of a run reaches the same process, so the device's data
and model replica are built once, in the first round. Top-k error feedback
(the device's residual) lives as long as that process; what the device must
remember between rounds (``Device.state``: SCAFFOLD's control variate, FedPer's
head, Ditto's personal model) lives in the node's ``context.state``
(:meth:`LocalNode.respond_with_state`), and a resumed run gets SCAFFOLD's c_i
back from the run store.
Where a node's data comes from (a partition of the run's data set, or its own
files) and which model file it may build: :mod:`flower_app.byod`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
from flwr.app import RecordDict

from data.datasets import CLASS_NAMES
from data.partition import split_local_test
from data.sources import load_source
from data.spec import BUILTIN_GREY, Preprocessing
from devices.device import Device, DeviceData
from devices.messages import DeviceUpdate, EncodedUpdate, TrainInstructions
from devices.trainer import ModelReplica, OptimizerSpec
from engine.models import ModelRegistry
from engine.setup import build_devices, stored_samples
from flower_app import records
from flower_app.byod import PREPROCESSING_KEY, dataset_spec, decode_spec, node_arrays, node_model
from flower_app.config import NodeSpec, parse_faults
from flower_app.image_folder import load_image_folder

STATE_PREFIX = "device-"  # context.state's array record "device-<name>" keeps the Device.state() entry <name>
DEVICE_CONTROL = STATE_PREFIX + "control"  # SCAFFOLD's c_i in context.state


@dataclass
class LocalNode:
    """This node's device (only its own data) and the replica it trains with."""

    spec: NodeSpec
    device: Device
    replica: ModelReplica

    def fit(self, instructions: TrainInstructions) -> DeviceUpdate:
        """One round of local training: exactly the in-process engine's ``Device.fit``."""
        return self.device.fit(instructions, self.replica, checkpoint=lambda steps: None)

    def respond(self, instructions: TrainInstructions) -> EncodedUpdate:
        """Train, then clip, noise and compress the update as instructed: what the server receives."""
        return self.device.respond(instructions, self.replica, checkpoint=lambda steps: None)

    def respond_with_state(self, instructions: TrainInstructions, state: RecordDict) -> EncodedUpdate:
        """:meth:`respond`, with the device's own state (``Device.state``: SCAFFOLD's c_i, FedPer's head, Ditto's
        personal model) read from and written back to ``state``, the node's Flower ``context.state``: it lasts
        the whole run on the SuperNode, whichever ClientApp process handles each message. Nothing of it is
        sent. A new Flower run starts with an empty ``context.state``: when it continues a stored run, the
        server sends the device's c_i as the run store kept it, which is used then (heads and Ditto models
        are not in the store for a Flower run: they start afresh)."""
        kept = {key.removeprefix(STATE_PREFIX): records.to_weights(arrays)
                for key, arrays in state.config_records.items() if key.startswith(STATE_PREFIX)}
        if "control" not in kept and instructions.control is not None \
                and instructions.control.device_weights is not None:
            kept["control"] = instructions.control.device_weights  # a resumed run: its own, from the run store
        self.device.restore_state(kept)
        update = self.respond(instructions)
        for name, weights in self.device.state().items():
            state.config_records[STATE_PREFIX + name] = records.to_arrays(weights)
        return update


def _own_device(spec: NodeSpec, x: np.ndarray, y: np.ndarray) -> Device:
    """A device on the node's own files: all of them, less the local test split (seeded by partition id)."""
    run = dict(spec.run)
    seed, fraction = int(run["seed"]), float(run["local-test-fraction"])
    train, test = split_local_test(np.arange(len(y)), fraction, np.random.default_rng([seed, spec.partition_id]))
    fault = parse_faults(str(run.get("faults", ""))).get(spec.partition_id, "none")
    return Device(spec.partition_id, DeviceData(x[train], y[train], x[test], y[test]), fault)


def node_samples(spec: NodeSpec) -> tuple[np.ndarray, np.ndarray, Preprocessing]:
    """The samples of a node with its own files, and the preprocessing they were encoded with."""
    run = dict(spec.run)
    if spec.data:
        x, y = node_arrays(spec.data, str(run[PREPROCESSING_KEY]))
        return x, y, decode_spec(run[PREPROCESSING_KEY])
    dataset = str(run["dataset"])  # the legacy image-folder: 28x28 grey pictures of a built-in set's classes
    x, y = load_image_folder(spec.image_folder, CLASS_NAMES[dataset])
    return x, y, replace(BUILTIN_GREY, class_names=CLASS_NAMES[dataset])


@functools.lru_cache(maxsize=2)
def local_node(spec: NodeSpec) -> LocalNode:
    """Build (once per process and spec) the node's device and model replica."""
    run = dict(spec.run)
    if spec.own_files:
        x, y, preprocessing = node_samples(spec)
        device = _own_device(spec, x, y)
    else:
        # The same cut as the in-process engine: every node loads the data set, computes all partitions, keeps its own.
        config = spec.federation()
        dataset = load_source(config.dataset, config.data_dir, config.source_options)
        device = build_devices(dataset, config)[spec.partition_id]
        x, preprocessing = dataset.x_train, dataset_spec(dataset)
    task = preprocessing.task
    outputs = len(preprocessing.class_names) if task == "classification" else 1
    model = node_model(str(run["model"]), spec.model_file)
    registry = ModelRegistry()
    replica = ModelReplica(
        lambda: registry.build(model, tuple(preprocessing.input_shape), outputs),
        OptimizerSpec(str(run["optimizer"]), float(run["momentum"])),
        samples=stored_samples(x, task),
    )
    return LocalNode(spec, device, replica)
