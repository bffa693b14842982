"""The math of aggregation: plain functions over lists of weight arrays."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from devices.messages import Weights


class RunningMean:
    """A weighted mean of many weight lists (models or deltas), accumulated one at a time in place.

    Each list is added into one float64 sum per layer, so memory stays at
    two models whatever the number of updates (no stacked copy of 100 models,
    no float64 copy of the stack): what :func:`weighted_average` uses.
    """

    def __init__(self, reference: Weights):
        self._sums = [np.zeros(np.shape(w), np.float64) for w in reference]
        self._scratch = [np.empty(np.shape(w), np.float64) for w in reference]
        self.total = 0.0
        self.count = 0

    def add(self, delta: Weights, coefficient: float) -> None:
        if coefficient < 0:
            raise ValueError(f"coefficients must be non-negative, got {coefficient}")
        for total, scratch, layer in zip(self._sums, self._scratch, delta):
            np.multiply(layer, coefficient, out=scratch)
            total += scratch
        self.total += coefficient
        self.count += 1

    def mean(self) -> Weights:
        if self.total <= 0:
            raise ValueError("nothing to average (no update, or all coefficients zero)")
        return [total / self.total for total in self._sums]


def weighted_average(weight_lists: Sequence[Weights], coefficients: Sequence[float]) -> Weights:
    """Per-layer average of ``weight_lists`` with ``coefficients`` normalised to sum to one.

    FedAvg uses the devices' sample counts as coefficients (McMahan et al. 2017).
    """
    if not weight_lists:
        raise ValueError("nothing to average")
    factors = np.asarray(coefficients, dtype=np.float64)
    if factors.shape != (len(weight_lists),) or np.any(factors < 0) or factors.sum() <= 0:
        raise ValueError("need one non-negative coefficient per update, not all zero")
    mean = RunningMean(weight_lists[0])  # in place: no stacked copy of every model, no float64 copy of the stack
    for weights, factor in zip(weight_lists, factors):
        mean.add(weights, float(factor))
    return [layer.astype(np.asarray(reference).dtype) for layer, reference in zip(mean.mean(), weight_lists[0])]


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


# --- Robust aggregation: coordinate-wise statistics of the models, unweighted ---------------------


def _stacked(weight_lists: Sequence[Weights], layer: int) -> np.ndarray:
    return np.stack([np.asarray(weights[layer], dtype=np.float64) for weights in weight_lists])


def coordinate_median(weight_lists: Sequence[Weights]) -> Weights:
    """Coordinate-wise median of the models, ignoring sample counts (Yin et al. 2018, Alg. "median")."""
    if not weight_lists:
        raise ValueError("nothing to aggregate")
    return [np.median(_stacked(weight_lists, layer), axis=0) for layer in range(len(weight_lists[0]))]


def trim_count(num_models: int, beta: float) -> int:
    """How many models to drop at *each* end for trim fraction ``beta``; at least one model always remains."""
    if not 0 <= beta < 0.5:
        raise ValueError(f"trim fraction beta must be in [0, 0.5), got {beta}")
    return min(int(np.floor(beta * num_models)), (num_models - 1) // 2)


def trimmed_mean(weight_lists: Sequence[Weights], beta: float) -> Weights:
    """Coordinate-wise mean after dropping the ``beta`` fraction largest and smallest values (Yin et al. 2018)."""
    if not weight_lists:
        raise ValueError("nothing to aggregate")
    cut = trim_count(len(weight_lists), beta)
    kept = slice(cut, len(weight_lists) - cut)
    return [
        np.sort(_stacked(weight_lists, layer), axis=0)[kept].mean(axis=0) for layer in range(len(weight_lists[0]))
    ]


# --- Server optimizers: the global model steps along a pseudo-gradient -----------------------------


def pseudo_gradient(global_weights: Weights, mean: Weights) -> Weights:
    """``mean - global``: the average device update, the direction the devices moved the model."""
    return [np.asarray(m, np.float64) - np.asarray(g, np.float64) for g, m in zip(global_weights, mean)]


def momentum_update(velocity: Weights, delta: Weights, momentum: float) -> Weights:
    """Server momentum of FedAvgM (Hsu et al. 2019): ``v = momentum * v + (global - mean)`` with ``delta = mean - global``."""
    return [momentum * v - d for v, d in zip(velocity, delta)]


def first_moment_update(m: Weights, delta: Weights, beta_1: float) -> Weights:
    """``m = beta_1 * m + (1 - beta_1) * delta`` (Reddi et al. 2021, Algorithm 2)."""
    return [beta_1 * mi + (1.0 - beta_1) * d for mi, d in zip(m, delta)]


def adagrad_second_moment(v: Weights, delta: Weights) -> Weights:
    """FedAdagrad: ``v = v + delta^2``."""
    return [vi + d * d for vi, d in zip(v, delta)]


def adam_second_moment(v: Weights, delta: Weights, beta_2: float) -> Weights:
    """FedAdam: ``v = beta_2 * v + (1 - beta_2) * delta^2``."""
    return [beta_2 * vi + (1.0 - beta_2) * d * d for vi, d in zip(v, delta)]


def yogi_second_moment(v: Weights, delta: Weights, beta_2: float) -> Weights:
    """FedYogi: ``v = v - (1 - beta_2) * delta^2 * sign(v - delta^2)``; v moves towards delta^2 additively."""
    return [vi - (1.0 - beta_2) * d * d * np.sign(vi - d * d) for vi, d in zip(v, delta)]


def adaptive_step(global_weights: Weights, m: Weights, v: Weights, learning_rate: float, tau: float) -> Weights:
    """``global + learning_rate * m / (sqrt(v) + tau)`` (Reddi et al. 2021, Algorithm 2)."""
    return [np.asarray(g, np.float64) + learning_rate * mi / (np.sqrt(vi) + tau) for g, mi, vi in zip(global_weights, m, v)]


def as_float32(weights: Weights) -> Weights:
    """The weights as float32 arrays (no copy when they already are)."""
    return [np.asarray(array, dtype=np.float32) for array in weights]


# --- Fair aggregation: q-FFL (Li et al. 2020) ---------------------------------------------------------


def qfedavg_step(
    global_weights: Weights, local_models: Sequence[Weights], losses: Sequence[float], q: float, lipschitz: float
) -> Weights:
    """One server step of q-FedAvg (Li, Sanjabi, Beirami & Smith 2020, Algorithm 2).

    For device k with loss ``F_k`` of the received model: ``dw_k = L (w - w_k)``,
    ``delta_k = F_k^q dw_k``, ``h_k = q F_k^(q-1) ||dw_k||^2 + L F_k^q``; then
    ``w = w - sum(delta_k) / sum(h_k)``. Devices with a higher loss weigh more as ``q`` grows;
    ``q = 0`` is the unweighted mean of the local models.
    """
    if not local_models:
        raise ValueError("nothing to aggregate")
    loss = np.maximum(np.asarray(losses, np.float64), 1e-12)  # F^(q-1) needs F > 0
    moves = [[lipschitz * (np.asarray(g, np.float64) - np.asarray(w, np.float64)) for g, w in zip(global_weights, m)]
             for m in local_models]
    squared = np.array([sum(float(np.sum(d * d)) for d in move) for move in moves])
    h_total = float(np.sum(q * loss ** (q - 1) * squared + lipschitz * loss**q))
    return [
        np.asarray(g, np.float64) - sum(f**q * move[layer] for f, move in zip(loss, moves)) / h_total
        for layer, g in enumerate(global_weights)
    ]


# --- Normalised averaging: FedNova (Wang et al. 2020) --------------------------------------------------


def fednova_step(
    global_weights: Weights, local_models: Sequence[Weights], shares: Sequence[float], norms: Sequence[float]
) -> Weights:
    """FedNova's server step: ``w - tau_eff * sum_i p_i (w - w_i) / a_i`` with ``tau_eff = sum_i p_i a_i``.

    Each device's update is divided by its own amount of local work ``a_i`` (``||a_i||_1``), so devices that
    ran more steps no longer pull the model towards their own objective; ``p_i`` (normalised ``shares``, the
    sample counts) weigh them as in FedAvg. With equal ``a_i`` this is FedAvg.
    """
    if not local_models:
        raise ValueError("nothing to aggregate")
    p = np.asarray(shares, np.float64) / float(np.sum(shares))
    a = np.asarray(norms, np.float64)
    if np.any(a <= 0):
        raise ValueError(f"every device needs a positive amount of local work, got {a.tolist()}")
    tau_eff = float(np.sum(p * a))
    return [
        np.asarray(g, np.float64)
        - tau_eff * sum(pi / ai * (np.asarray(g, np.float64) - np.asarray(m[layer], np.float64))
                        for pi, ai, m in zip(p, a, local_models))
        for layer, g in enumerate(global_weights)
    ]


# --- Control variates: SCAFFOLD (Karimireddy et al. 2020) ---------------------------------------------


def scaffold_step(
    global_weights: Weights,
    local_models: Sequence[Weights],
    control: Weights,
    control_deltas: Sequence[Weights],
    num_devices: int,
    server_learning_rate: float,
) -> tuple[Weights, Weights]:
    """SCAFFOLD's server step (Algorithm 1): ``x + lr_g * mean(y_i - x)`` and ``c + sum(delta c_i) / N``.

    ``N`` is the number of devices in the federation, so ``c`` stays the mean of every device's control
    variate when only some of them take part in a round.
    """
    if not local_models:
        raise ValueError("nothing to aggregate")
    count = len(local_models)
    new_weights = [
        np.asarray(g, np.float64)
        + server_learning_rate * sum(np.asarray(m[layer], np.float64) - g for m in local_models) / count
        for layer, g in enumerate(global_weights)
    ]
    new_control = [
        np.asarray(c, np.float64) + sum(np.asarray(d[layer], np.float64) for d in control_deltas) / num_devices
        for layer, c in enumerate(control)
    ]
    return new_weights, new_control
