"""A SuperNode's local device: its data and a model replica, built once per process.

With Flower's default isolation every message runs in a fresh ClientApp
process and the cache below serves one message. With ``--isolation process``
and the long-lived worker (``scripts/clientapp_worker.py``, the loopback
default) every message of a run reaches the same process, so the device's data
and model replica are built once, in the first round. Top-k error feedback
(the device's residual) lives as long as that process; SCAFFOLD's control
variate lives in the node's ``context.state`` (:meth:`LocalNode.respond_with_state`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from flwr.app import RecordDict

from data.datasets import CLASS_NAMES, load_dataset
from data.partition import split_local_test
from devices.device import Device, DeviceData
from devices.messages import DeviceUpdate, EncodedUpdate, TrainInstructions
from devices.trainer import ModelReplica, OptimizerSpec
from engine.setup import build_devices
from engine.models import ModelRegistry
from flower_app import records
from flower_app.config import NodeSpec, federation_config, parse_faults
from flower_app.image_folder import load_image_folder

IMAGE_SHAPE = (28, 28, 1)
DEVICE_CONTROL = "scaffold-control"  # the device's SCAFFOLD control variate c_i in context.state


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
        """:meth:`respond`, with the device's own state (SCAFFOLD's c_i) read from and written back to
        ``state``, the node's Flower ``context.state``: it lasts the whole run on the SuperNode, whichever
        ClientApp process handles each message (a new run starts from zero)."""
        kept = state.array_records.get(DEVICE_CONTROL)
        self.device.restore_state({"control": records.to_weights(kept)} if kept is not None else {})
        update = self.respond(instructions)
        control = self.device.state().get("control")
        if control is not None:
            state.array_records[DEVICE_CONTROL] = records.to_arrays(control)
        return update


def _device(spec: NodeSpec) -> Device:
    if spec.image_folder:
        run = dict(spec.run)
        config = federation_config({**run, "faults": ""}, num_devices=1, data_dir=spec.data_dir)
        x, y = load_image_folder(spec.image_folder, CLASS_NAMES[config.dataset])
        rng = np.random.default_rng([config.seed, spec.partition_id])
        train, test = split_local_test(np.arange(len(y)), config.local_test_fraction, rng)
        fault = parse_faults(str(run.get("faults", ""))).get(spec.partition_id, "none")
        return Device(spec.partition_id, DeviceData(x[train], y[train], x[test], y[test]), fault)
    config = spec.federation()
    dataset = load_dataset(config.dataset, config.data_dir)
    # The same cut as the in-process engine: every node computes all partitions and keeps its own.
    return build_devices(dataset, config)[spec.partition_id]


@functools.lru_cache(maxsize=2)
def local_node(spec: NodeSpec) -> LocalNode:
    """Build (once per process and spec) the node's device and model replica."""
    device = _device(spec)
    run = dict(spec.run)
    dataset, model = str(run["dataset"]), str(run["model"])
    num_classes = len(CLASS_NAMES[dataset])
    registry = ModelRegistry()
    replica = ModelReplica(
        lambda: registry.build(model, IMAGE_SHAPE, num_classes),
        OptimizerSpec(str(run["optimizer"]), float(run["momentum"])),
    )
    return LocalNode(spec, device, replica)
