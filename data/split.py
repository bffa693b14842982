"""A seeded, stratified train/test split shared by every source without a test split of its own."""

from __future__ import annotations

import numpy as np


def stratified_split(y: np.ndarray, fraction: float, seed: int, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices; each class (when ``stratify``) gives ``fraction`` of itself, at least one."""
    rng = np.random.default_rng([seed, 17])
    groups = [np.flatnonzero(y == value) for value in np.unique(y)] if stratify else [np.arange(len(y))]
    test = []
    for members in groups:
        count = int(round(len(members) * fraction))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        test.append(rng.permutation(members)[:count])
    test_index = np.sort(np.concatenate(test)).astype(np.int64)
    return np.setdiff1d(np.arange(len(y)), test_index), test_index
