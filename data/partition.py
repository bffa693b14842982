"""Split a training set across devices: IID, label skew, pathological shards, quantity skew.

Every partitioner is a pure function of the labels, the number of devices and a
seeded generator. The result is a list of index arrays, one per device, that are
disjoint and together use every sample exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PARTITION_SCHEMES = ("iid", "dirichlet", "shards", "quantity", "natural")
LABEL_SCHEMES = ("dirichlet", "shards")
"""Schemes that need class labels (not usable for a regression)."""


@dataclass(frozen=True)
class PartitionSpec:
    """How to split the data: the scheme and its one parameter."""

    scheme: str = "iid"
    alpha: float = 0.5  # Dirichlet concentration: smaller means more label skew
    shards_per_device: int = 2
    quantity_alpha: float = 1.0  # Dirichlet concentration of device sizes (quantity skew)


def iid(num_samples: int, num_devices: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, then deal equal-sized slices."""
    return [np.sort(part) for part in np.array_split(rng.permutation(num_samples), num_devices)]


def _sizes_from_proportions(total: int, proportions: np.ndarray, minimum: int) -> np.ndarray:
    """Integer sizes summing to ``total``, each at least ``minimum``, close to ``proportions``."""
    spare = total - minimum * len(proportions)
    sizes = np.floor(proportions * spare).astype(int)
    leftover = spare - sizes.sum()
    sizes[np.argsort(-(proportions * spare - sizes))[:leftover]] += 1
    return sizes + minimum


def quantity_skew(
    num_samples: int, num_devices: int, rng: np.random.Generator, alpha: float = 1.0, minimum: int = 10
) -> list[np.ndarray]:
    """IID content, unequal sizes drawn from Dirichlet(alpha): smaller alpha, more unequal."""
    if num_samples < minimum * num_devices:
        minimum = num_samples // num_devices
    sizes = _sizes_from_proportions(num_samples, rng.dirichlet(np.full(num_devices, alpha)), minimum)
    bounds = np.cumsum(sizes)[:-1]
    return [np.sort(part) for part in np.split(rng.permutation(num_samples), bounds)]


def dirichlet(
    labels: np.ndarray,
    num_devices: int,
    alpha: float,
    rng: np.random.Generator,
    min_samples: int = 10,
) -> list[np.ndarray]:
    """Label skew: each class is split across devices with Dirichlet(alpha) proportions.

    Devices left with fewer than ``min_samples`` samples are topped up with
    random samples from the largest devices, so that every device can train
    even with a thousand devices and a small alpha (redrawing until every
    device is big enough, as small benchmarks do, never ends at that scale).
    """
    labels = np.asarray(labels)
    min_samples = min(min_samples, len(labels) // num_devices)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_devices)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cuts = (np.cumsum(rng.dirichlet(np.full(num_devices, alpha))) * len(members)).astype(int)[:-1]
        bounds = [0, *cuts.tolist(), len(members)]  # np.split's chunks, sliced directly (np.split: 10x slower)
        for device in range(num_devices):
            parts[device].append(members[bounds[device]:bounds[device + 1]])
    result = [rng.permutation(np.concatenate(chunks)) for chunks in parts]
    sizes = np.array([len(part) for part in result])  # kept in step with result: 10,000 devices top up in ms
    for device in np.flatnonzero(sizes < min_samples):
        while sizes[device] < min_samples:
            donor = int(np.argmax(sizes))
            needed = int(min(min_samples - sizes[device], sizes[donor] - min_samples))
            result[device] = np.concatenate([result[device], result[donor][:needed]])
            result[donor] = result[donor][needed:]
            sizes[device] += needed
            sizes[donor] -= needed
    return [np.sort(part) for part in result]


def shards(
    labels: np.ndarray, num_devices: int, shards_per_device: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Pathological non-IID (McMahan et al.): sort by label, cut into shards, deal k to each device."""
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, num_devices * shards_per_device)
    dealt = rng.permutation(len(pieces)).reshape(num_devices, shards_per_device)
    return [np.sort(np.concatenate([pieces[i] for i in row])) for row in dealt]


def natural(groups: np.ndarray, num_devices: int) -> list[np.ndarray]:
    """The data's own partition: device ``d`` gets the samples whose group is ``d``."""
    return [np.flatnonzero(groups == device) for device in range(num_devices)]


def partition(
    labels: np.ndarray, num_devices: int, spec: PartitionSpec, seed: int, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """Split sample indices across ``num_devices`` devices according to ``spec``.

    ``natural`` needs ``groups`` (each sample's device, from per-device folders or a device column).
    """
    if spec.scheme == "natural":
        if groups is None:
            raise ValueError("the natural partition needs per-device data (ROOT/devices/<device>/ folders "
                             "or a CSV --device-column)")
        return natural(groups, num_devices)
    if num_devices < 1:
        raise ValueError("need at least one device")
    if num_devices > len(labels):
        raise ValueError(f"cannot split {len(labels)} samples across {num_devices} devices")
    rng = np.random.default_rng(seed)
    if spec.scheme == "iid":
        return iid(len(labels), num_devices, rng)
    if spec.scheme == "dirichlet":
        return dirichlet(labels, num_devices, spec.alpha, rng)
    if spec.scheme == "shards":
        if num_devices * spec.shards_per_device > len(labels):
            raise ValueError("more shards than samples; use fewer devices or shards per device")
        return shards(labels, num_devices, spec.shards_per_device, rng)
    if spec.scheme == "quantity":
        return quantity_skew(len(labels), num_devices, rng, spec.quantity_alpha)
    raise ValueError(f"unknown partition scheme {spec.scheme!r}; choose one of {', '.join(PARTITION_SCHEMES)}")


def split_local_test(
    indices: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``fraction`` of a device's samples (at least one when it has two) as its local test split."""
    shuffled = rng.permutation(indices)
    held_out = int(round(len(shuffled) * fraction))
    if fraction > 0 and len(shuffled) >= 2:
        held_out = min(max(held_out, 1), len(shuffled) - 1)
    return np.sort(shuffled[held_out:]), np.sort(shuffled[:held_out])


def label_histogram(device_labels: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Samples of each class on each device, from each device's labels: shape (devices, classes)."""
    return np.stack([np.bincount(labels, minlength=num_classes) for labels in device_labels])


def target_histogram(
    device_targets: list[np.ndarray], all_targets: np.ndarray, bins: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Samples of each target bin on each device (devices, bins), over ``bins`` equal bins of all targets."""
    low, high = float(np.min(all_targets)), float(np.max(all_targets))
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    counts = [np.histogram(np.clip(t, low, edges[-1]), edges)[0] for t in device_targets]
    return np.stack(counts), edges
