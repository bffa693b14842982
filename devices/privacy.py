"""Differential-privacy primitives applied to a device's update: clipping and Gaussian noise."""

from __future__ import annotations

import numpy as np

from devices.messages import Weights


def global_norm(weights: Weights) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(w, dtype=np.float64))) for w in weights)))


def clip_by_global_norm(delta: Weights, clip_norm: float) -> Weights:
    """Scale ``delta`` down so its L2 norm over all tensors is at most ``clip_norm`` (DP-FedAvg)."""
    norm = global_norm(delta)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return [(w * factor).astype(np.float32) for w in delta]


def add_gaussian_noise(weights: Weights, stddev: float, rng: np.random.Generator) -> Weights:
    """Add i.i.d. N(0, stddev^2) noise to every coordinate."""
    return [(w + rng.normal(0.0, stddev, size=w.shape)).astype(np.float32) for w in weights]
