"""Personalisation's math on weight lists (NumPy only): FedPer's body/head split, Ditto's proximal gradient,
the fine-tuning batches.

A model's weights travel as one list of arrays (``model.weights`` order). FedPer
(Arivazhagan et al. 2019) keeps some of them, the *head* (the last Dense
layer: its kernel and bias), on the device: ``head`` is the tuple of their
positions in the list, and the *body* is every other array, in order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from devices.messages import Weights


def split_weights(weights: Weights, head: Sequence[int]) -> tuple[Weights, Weights]:
    """``(body, head)``: the arrays not at the positions ``head`` (in order), and those at them (in ``head``'s order)."""
    positions = set(head)
    if any(not 0 <= p < len(weights) for p in positions):
        raise ValueError(f"head positions {sorted(positions)} fall outside the model's {len(weights)} weight arrays")
    return [w for i, w in enumerate(weights) if i not in positions], [weights[p] for p in head]


def merge_weights(body: Weights, head_arrays: Weights, head: Sequence[int]) -> Weights:
    """The inverse of :func:`split_weights`: the full list with ``head_arrays`` at positions ``head``."""
    total = len(body) + len(head_arrays)
    if len(head_arrays) != len(head):
        raise ValueError(f"{len(head_arrays)} head arrays for {len(head)} head positions")
    placed = dict(zip(head, head_arrays))
    rest = iter(body)
    return [placed[i] if i in placed else next(rest) for i in range(total)]


def with_own_head(received: Weights, own_head: Weights | None, head: Sequence[int]) -> Weights:
    """FedPer's starting point on a device: the received body under the device's own head (the received head the
    first time, when the device has none yet)."""
    if own_head is None:
        return list(received)
    return merge_weights(split_weights(received, head)[0], own_head, head)


def ditto_gradient(gradient: Weights, personal: Weights, global_weights: Weights, lam: float) -> Weights:
    """Ditto's personal-model gradient (Li et al. 2021, Algorithm 1): ``grad F_k(v) + lambda (v - w)``, the
    gradient of the local loss plus that of ``lambda/2 ||v - w||^2`` toward the global model ``w``."""
    return [np.asarray(g, np.float64) + lam * (np.asarray(v, np.float64) - np.asarray(w, np.float64))
            for g, v, w in zip(gradient, personal, global_weights)]


def finetune_indices(num_samples: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """The training samples of exactly ``steps`` full batches: seeded shuffles of the device's samples, one after
    another, cut at ``steps * batch_size`` (a device with fewer samples than that sees some twice)."""
    if num_samples < 1:
        raise ValueError("fine-tuning needs at least one training sample")
    needed = steps * batch_size
    rng = np.random.default_rng(seed)
    rounds = -(-needed // num_samples)
    return np.concatenate([rng.permutation(num_samples) for _ in range(rounds)])[:needed].astype(np.int64)

