"""The math of aggregation: plain functions over lists of weight arrays."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from devices.messages import Weights


def weighted_average(weight_lists: Sequence[Weights], coefficients: Sequence[float]) -> Weights:
    """Per-layer average of ``weight_lists`` with ``coefficients`` normalised to sum to one.

    FedAvg uses the devices' sample counts as coefficients (McMahan et al. 2017).
    """
    if not weight_lists:
        raise ValueError("nothing to average")
    factors = np.asarray(coefficients, dtype=np.float64)
    if factors.shape != (len(weight_lists),) or np.any(factors < 0) or factors.sum() <= 0:
        raise ValueError("need one non-negative coefficient per update, not all zero")
    factors = factors / factors.sum()
    return [
        np.tensordot(factors, np.stack([weights[layer] for weights in weight_lists]), axes=1).astype(
            weight_lists[0][layer].dtype
        )
        for layer in range(len(weight_lists[0]))
    ]


def update_problem(weights: Weights, reference: Weights) -> str | None:
    """Why an update cannot be aggregated against ``reference`` (shapes, non-finite values), or None."""
    if len(weights) != len(reference):
        return f"update has {len(weights)} weight arrays, the model has {len(reference)}"
    for index, (array, expected) in enumerate(zip(weights, reference)):
        if np.shape(array) != expected.shape:
            return f"weight array {index} has shape {np.shape(array)}, expected {expected.shape}"
        if not np.all(np.isfinite(array)):
            return f"weight array {index} contains NaN or Inf"
    return None
