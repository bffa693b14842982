"""What both transports build the same way: the devices' data and the server's test set.

Kept apart from :mod:`engine.federation` so a Flower SuperNode or ServerApp can
cut exactly the engine's partitions without importing the federation, its
worker pool or its run loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.datasets import Dataset
from data.partition import partition, split_local_test
from engine.config import FederationConfig


@dataclass(frozen=True)
class ServerTestSet:
    x: np.ndarray
    y: np.ndarray
    num_classes: int


def device_indices(labels: np.ndarray, config: FederationConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each device's (local train, local test) indices into the training set: NumPy only, no TensorFlow."""
    rng = np.random.default_rng(config.seed)
    pool = np.arange(len(labels))
    if config.train_samples is not None and config.train_samples < len(pool):
        pool = np.sort(rng.choice(pool, size=config.train_samples, replace=False))
    parts = partition(labels[pool], config.num_devices, config.partition_spec, config.seed)
    return [split_local_test(pool[part], config.local_test_fraction, rng) for part in parts]


def build_devices(dataset: Dataset, config: FederationConfig) -> list:
    """Give each device (``devices.device.Device``) its own copy of its partition, split into train and test."""
    from devices.device import Device, DeviceData  # TensorFlow: only for those who train

    devices = []
    for device_id, (train, test) in enumerate(device_indices(dataset.y_train, config)):
        data = DeviceData(dataset.x_train[train], dataset.y_train[train], dataset.x_train[test], dataset.y_train[test])
        devices.append(
            Device(device_id, data, config.faults.get(device_id, "none"), config.slowdowns.get(device_id, 1.0))
        )
    return devices


def server_test_set(dataset: Dataset, config: FederationConfig) -> ServerTestSet:
    """The server's held-out slice of the test set (``test_samples`` first samples, or all)."""
    count = min(config.test_samples or len(dataset.y_test), len(dataset.y_test))
    return ServerTestSet(dataset.x_test[:count], dataset.y_test[:count], dataset.num_classes)
