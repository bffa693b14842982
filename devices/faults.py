"""Simulated faulty and malicious devices: what they send instead of an honest model."""

from __future__ import annotations

import numpy as np

from devices.messages import Weights

FAULTS = ("none", "crash", "nan", "scale", "random")
SCALE_ATTACK_FACTOR = -10.0  # a "scale" device sends its update flipped and boosted tenfold


class SimulatedCrash(RuntimeError):
    """A device configured to ``crash`` raises this halfway through local training."""


def misbehave(fault: str, received: Weights, trained: Weights, rng: np.random.Generator) -> Weights:
    """The model a device with ``fault`` sends back (``crash`` is handled during training)."""
    if fault == "nan":
        return [np.full_like(w, np.nan) for w in trained]
    if fault == "scale":
        return [(r + SCALE_ATTACK_FACTOR * (t - r)).astype(np.float32) for r, t in zip(received, trained)]
    if fault == "random":
        return [rng.normal(0.0, 1.0, size=w.shape).astype(np.float32) for w in trained]
    return trained
