"""Simulated secure aggregation with pairwise additive masks (Bonawitz et al. 2017, simplified).

Each device turns its weighted update into fixed-point integers modulo 2^64 and
adds, for every other device in the round, a pseudo-random mask derived from a
seed the pair shares: ``+mask`` if its id is the smaller of the two, ``-mask``
otherwise. Every mask appears once with each sign, so the masks cancel exactly
in the sum, while each individual masked vector looks uniformly random to the
server. What is simulated: the pairwise seeds come from a shared secret instead
of a Diffie-Hellman key agreement, and a dropped device's masks are removed by
asking the survivors for them instead of reconstructing its key from secret
shares. The arithmetic the server sees is the real thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from devices.messages import Weights

FIXED_POINT_SCALE = 2.0**24  # resolution 6e-8: far below float32 noise in a model delta


@dataclass(frozen=True)
class SecureAggregationPlan:
    """What a device needs to mask its update in one round."""

    peers: tuple[int, ...]  # every device masking in this round (including itself)
    secret: int  # stands in for the pairwise key agreement
    weight: float  # this device's share of the round's samples


def flatten(weights: Weights) -> np.ndarray:
    return np.concatenate([np.asarray(w, np.float64).ravel() for w in weights])


def unflatten(flat: np.ndarray, like: Weights) -> Weights:
    out, start = [], 0
    for reference in like:
        out.append(flat[start:start + reference.size].reshape(reference.shape).astype(np.float32))
        start += reference.size
    return out


def to_fixed_point(values: np.ndarray) -> np.ndarray:
    """Real values to integers modulo 2^64 (two's complement)."""
    return np.rint(values * FIXED_POINT_SCALE).astype(np.int64).view(np.uint64)


def from_fixed_point(values: np.ndarray) -> np.ndarray:
    return values.view(np.int64).astype(np.float64) / FIXED_POINT_SCALE


def pairwise_mask(secret: int, a: int, b: int, size: int) -> np.ndarray:
    """The mask devices ``a`` and ``b`` share: uniform 64-bit integers from their common seed."""
    generator = np.random.PCG64([secret, min(a, b), max(a, b)])
    return generator.random_raw(size).astype(np.uint64)


def mask_sum(device_id: int, peers: tuple[int, ...], secret: int, size: int) -> np.ndarray:
    """The total mask ``device_id`` adds for ``peers``: +shared if it is the smaller id, else -shared."""
    total = np.zeros(size, np.uint64)
    for peer in peers:
        if peer == device_id:
            continue
        shared = pairwise_mask(secret, device_id, peer, size)
        total = total + shared if device_id < peer else total - shared
    return total


def mask_update(device_id: int, delta: Weights, plan: SecureAggregationPlan) -> np.ndarray:
    """Weighted, fixed-point, masked form of ``delta``: all the server ever sees of it."""
    fixed = to_fixed_point(flatten(delta) * plan.weight)
    return fixed + mask_sum(device_id, plan.peers, plan.secret, fixed.size)


def unmask_total(masked: list[np.ndarray], corrections: list[np.ndarray]) -> np.ndarray:
    """Sum of the masked vectors minus survivors' masks shared with dropped devices, back to reals."""
    total = np.zeros_like(masked[0])
    for vector in masked:
        total = total + vector
    for correction in corrections:
        total = total - correction
    return from_fixed_point(total)
