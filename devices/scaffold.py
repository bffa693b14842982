"""SCAFFOLD's device side (Karimireddy et al. 2020): the gradient correction and the control-variate update."""

from __future__ import annotations

import numpy as np

from devices.messages import ControlVariate, TrainInstructions, Weights


def local_work(steps: int, momentum: float = 0.0) -> float:
    """How far ``steps`` local SGD steps move per unit gradient, in steps: ``steps`` for plain SGD, FedNova's
    ``||a||_1 = (steps - rho (1 - rho^steps) / (1 - rho)) / (1 - rho)`` with momentum rho."""
    if momentum == 0:
        return float(steps)
    return (steps - momentum * (1 - momentum**steps) / (1 - momentum)) / (1 - momentum)


def control_correction(control: ControlVariate | None, device_control: Weights | None) -> Weights | None:
    """``c - c_i``, added to every local gradient; None when the round sends no control variate."""
    if control is None or (control.weights is None and device_control is None):
        return None
    server = control.weights
    own = device_control
    if server is None:
        return [-c for c in own]
    if own is None:
        return [np.asarray(c, np.float32) for c in server]
    return [(np.asarray(c, np.float32) - ci).astype(np.float32) for c, ci in zip(server, own)]


def updated_control(
    instructions: TrainInstructions, device_control: Weights | None, trained: Weights, steps: int
) -> tuple[Weights, Weights]:
    """The device's new control variate and its change (Karimireddy et al. 2020, Algorithm 1, option II).

    ``c_i+ = c_i - c + (x - y) / (K * lr)``: the average corrected gradient along the local path from the
    received model x to the trained model y, over K steps at learning rate lr (K normalised for momentum).
    """
    control = instructions.control
    assert control is not None
    received = instructions.weights
    zeros = [np.zeros_like(np.asarray(w, np.float32)) for w in received]
    own = device_control if device_control is not None else zeros
    server = control.weights if control.weights is not None else zeros
    scale = 1.0 / (max(local_work(steps, control.local_momentum), 1e-12) * instructions.learning_rate)
    new = [(ci - c + scale * (np.asarray(x, np.float64) - np.asarray(y, np.float64))).astype(np.float32)
           for ci, c, x, y in zip(own, server, received, trained)]
    return new, [(n - ci).astype(np.float32) for n, ci in zip(new, own)]


def mirrored_control(kept: Weights | None, delta: Weights) -> Weights:
    """The server's copy of a device's c_i after the device reported the change ``delta`` (None: zero so far).

    ``c_i`` starts at zero and changes only by the deltas the device sends, so their running sum is the device's
    own variate (to float32 rounding: the device computes ``c_i+`` and sends ``c_i+ - c_i``) and needs nothing
    the server was not sent already.
    """
    if kept is None:
        return [np.asarray(d, np.float32).copy() for d in delta]
    return [(np.asarray(k, np.float32) + np.asarray(d, np.float32)).astype(np.float32) for k, d in zip(kept, delta)]
