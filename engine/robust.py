"""Byzantine-robust aggregation by selection: Krum, Multi-Krum (Blanchard et al. 2017), Bulyan (El Mhamdi et al. 2018).

Plain functions over lists of weight arrays. Every model is one point (all its
weights flattened); distances are squared Euclidean. Models are unweighted:
a malicious device could lie about its sample count.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from devices.messages import Weights


def krum_minimum(f: int) -> int:
    """Fewest models Krum's guarantee holds for: ``n > 2f + 2`` (Blanchard et al. 2017, Proposition 1)."""
    return 2 * f + 3


def bulyan_minimum(f: int) -> int:
    """Fewest models Bulyan's guarantee holds for: ``n >= 4f + 3`` (El Mhamdi et al. 2018, Section 4)."""
    return 4 * f + 3


def flatten(weights: Weights) -> np.ndarray:
    """All of a model's weights as one float64 vector."""
    return np.concatenate([np.asarray(w, np.float64).ravel() for w in weights])


def pairwise_sq_distances(points: np.ndarray) -> np.ndarray:
    """``[n, n]`` squared Euclidean distances between the rows of ``points``."""
    # row by row: an [n, n, d] difference tensor would not fit in memory for real models
    return np.stack([np.sum((points - point) ** 2, axis=1) for point in points])


def krum_scores(points: np.ndarray, f: int) -> np.ndarray:
    """Each point's Krum score: the sum of squared distances to its ``n - f - 2`` nearest other points.

    With fewer points than Krum needs the neighbourhood shrinks to at least one
    other point (as Flower does), so Bulyan's last selections still have a score.
    """
    n = len(points)
    if n == 1:
        return np.zeros(1)
    neighbours = min(max(n - f - 2, 1), n - 1)
    distances = pairwise_sq_distances(points)
    np.fill_diagonal(distances, np.inf)
    return np.sort(distances, axis=1)[:, :neighbours].sum(axis=1)


def krum_select(points: np.ndarray, f: int, m: int = 1) -> np.ndarray:
    """Indices of the ``m`` points with the lowest Krum scores (ties: lower index first)."""
    if not 1 <= m <= len(points):
        raise ValueError(f"can select between 1 and {len(points)} models, asked for {m}")
    return np.argsort(krum_scores(points, f), kind="stable")[:m]


def unflatten_like(vector: np.ndarray, like: Weights) -> Weights:
    """Cut ``vector`` back into arrays shaped like ``like``."""
    arrays, start = [], 0
    for array in like:
        size = int(np.prod(np.shape(array)))
        arrays.append(vector[start:start + size].reshape(np.shape(array)))
        start += size
    return arrays


def multi_krum(weight_lists: Sequence[Weights], f: int, m: int) -> tuple[Weights, list[int]]:
    """The unweighted mean of the ``m`` models with the best Krum scores, and their positions.

    ``m = 1`` is Krum: the single model closest to its ``n - f - 2`` neighbours.
    """
    if not weight_lists:
        raise ValueError("nothing to aggregate")
    points = np.stack([flatten(w) for w in weight_lists])
    chosen = krum_select(points, f, m)
    return unflatten_like(points[chosen].mean(axis=0), weight_lists[0]), sorted(int(i) for i in chosen)


def bulyan_selection(points: np.ndarray, f: int) -> list[int]:
    """Bulyan's first phase: apply Krum ``n - 2f`` times, each time moving the chosen point out of the pool."""
    remaining = list(range(len(points)))
    selected: list[int] = []
    for _ in range(len(points) - 2 * f):
        best = remaining[int(krum_select(points[remaining], f, 1)[0])]
        selected.append(best)
        remaining.remove(best)
    return selected


def closest_to_median_mean(points: np.ndarray, beta: int) -> np.ndarray:
    """Per coordinate, the mean of the ``beta`` values closest to that coordinate's median (ties: lower index)."""
    median = np.median(points, axis=0)
    order = np.argsort(np.abs(points - median), axis=0, kind="stable")[:beta]
    return np.take_along_axis(points, order, axis=0).mean(axis=0)


def bulyan(weight_lists: Sequence[Weights], f: int) -> tuple[Weights, list[int]]:
    """Bulyan (El Mhamdi et al. 2018): ``theta = n - 2f`` models chosen by repeated Krum, then per coordinate
    the mean of the ``beta = theta - 2f`` selected values closest to their median. Returns the model and the
    positions of the selected models."""
    n = len(weight_lists)
    if n < bulyan_minimum(f):
        raise ValueError(f"Bulyan with f={f} needs at least 4f+3 = {bulyan_minimum(f)} models, got {n}")
    points = np.stack([flatten(w) for w in weight_lists])
    selected = bulyan_selection(points, f)
    aggregate = closest_to_median_mean(points[selected], len(selected) - 2 * f)
    return unflatten_like(aggregate, weight_lists[0]), sorted(selected)
