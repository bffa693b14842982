"""What both transports build the same way: the devices' data, its histogram and the server's test set.

Kept apart from :mod:`engine.federation` so a Flower SuperNode or ServerApp can
cut exactly the engine's partitions without importing the federation, its
worker pool or its run loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from data.datasets import Dataset
from data.errors import DataError
from data.partition import label_histogram, partition, split_local_test, target_histogram
from engine.config import FederationConfig
from engine.data_fit import data_problem

if TYPE_CHECKING:
    from devices.trainer import SampleSpec


@dataclass(frozen=True)
class ServerTestSet:
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    task: str = "classification"


def stored_samples(x: np.ndarray, task: str):
    """How stored samples ``x`` feed the model (``devices.trainer.SampleSpec``): uint8 scaled, float32 as given."""
    from devices.trainer import SampleSpec  # TensorFlow: only for those who train

    return SampleSpec(tuple(x.shape[1:]), "uint8" if x.dtype == np.uint8 else "float32", task)


def device_indices(
    labels: np.ndarray, config: FederationConfig, groups: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each device's (local train, local test) indices into the training set: NumPy only, no TensorFlow.

    ``groups`` (each sample's device) serves the natural partition."""
    rng = np.random.default_rng(config.seed)
    pool = np.arange(len(labels))
    if config.train_samples is not None and config.train_samples < len(pool):
        pool = np.sort(rng.choice(pool, size=config.train_samples, replace=False))
    try:
        parts = partition(labels[pool], config.num_devices, config.partition_spec, config.seed,
                          None if groups is None else groups[pool])
    except ValueError as error:
        raise DataError(str(error)) from None
    return [split_local_test(pool[part], config.local_test_fraction, rng) for part in parts]


def build_devices(dataset: Dataset, config: FederationConfig) -> list:
    """Give each device (``devices.device.Device``) its own copy of its partition, split into train and test."""
    from devices.device import Device, DeviceData  # TensorFlow: only for those who train

    problem = data_problem(dataset, config)
    if problem:
        raise DataError(problem)
    devices = []
    for device_id, (train, test) in enumerate(device_indices(dataset.y_train, config, dataset.train_groups)):
        data = DeviceData(dataset.x_train[train], dataset.y_train[train], dataset.x_train[test], dataset.y_train[test])
        devices.append(
            Device(device_id, data, config.faults.get(device_id, "none"), config.slowdowns.get(device_id, 1.0))
        )
    return devices


def server_test_set(dataset: Dataset, config: FederationConfig) -> ServerTestSet:
    """The server's held-out slice of the test set (``test_samples`` first samples, or all)."""
    count = min(config.test_samples or len(dataset.y_test), len(dataset.y_test))
    return ServerTestSet(dataset.x_test[:count], dataset.y_test[:count], dataset.num_classes, dataset.task)


def sample_spec(dataset: Dataset) -> "SampleSpec":
    """How the devices' stored samples of ``dataset`` feed the model."""
    return stored_samples(dataset.x_train, dataset.task)


def data_histogram(dataset: Dataset, devices: list) -> tuple[np.ndarray, tuple[str, ...]]:
    """Per device: samples of each class, or of each target bin for a regression; and the column names."""
    targets = [d.data.y_train for d in devices]
    if dataset.task == "regression":
        counts, edges = target_histogram(targets, dataset.y_train)
        return counts, tuple(f"{low:.3g}..{high:.3g}" for low, high in zip(edges[:-1], edges[1:]))
    return label_histogram(targets, dataset.num_classes), dataset.class_names

