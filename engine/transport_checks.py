"""Checks on what a device sends back, before the server uses any of it.

A device is not trusted: a bug, a wrong version or an attacker can send
anything a transport can carry. Every function here returns why a reply is
unusable (one line, naming what was received and what is allowed) or None;
the round loop turns a reason into that device's problem for the round and
goes on. Nothing here raises on bad input.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Callable, Sequence

import numpy as np

from devices.codec import COMPRESSIONS, decode_delta, deserialize
from devices.codec import _shapes as encoded_shapes
from devices.messages import DeviceMetrics, EncodedUpdate, Weights
from engine.aggregation import RunningMean, update_problem

MAX_SAMPLES = 10**9  # no device declares more; bounds what a weighted mean can be steered by
DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, MemoryError, UnicodeDecodeError)
# What each array of an encoded update may hold (devices.codec.encode_delta): numpy dtype kinds.
ARRAY_KINDS = {"method": "u", "shapes": "iu", "values": "f", "scale": "f", "codes": "u", "indices": "iu"}


def samples_problem(num_samples: object, declared: int | None) -> str | None:
    """``num_samples`` must be an integer in [1, declared] (the device's declared data size, bounded)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, Integral):
        return f"num-examples must be an integer, got {num_samples!r}"
    limit = MAX_SAMPLES if declared is None else min(int(declared), MAX_SAMPLES)
    if not 1 <= int(num_samples) <= limit:
        return f"num-examples must be in [1, {limit}] (the device's declared data size), got {int(num_samples)}"
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    return float(value)


def metrics_problem(metrics: DeviceMetrics) -> str | None:
    """Metrics must be numbers: losses finite (or NaN: no local test data), accuracies in [0, 1], time finite."""
    for name in ("train_loss", "received_loss", "local_loss", "train_accuracy", "received_accuracy",
                 "local_accuracy", "seconds", "personalized_loss", "personalized_accuracy"):
        value = _number(getattr(metrics, name))
        if value is None:
            return f"metric {name} must be a number, got {getattr(metrics, name)!r}"
        if math.isnan(value) and name not in ("train_loss", "seconds"):
            continue  # an empty local test split has no loss or accuracy
        if not math.isfinite(value) or value < 0:
            return f"metric {name} must be a finite non-negative number, got {value!r}"
        if name.endswith("accuracy") and value > 1:
            return f"metric {name} must be in [0, 1], got {value!r}"
    steps = metrics.steps
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 0:
        return f"metric steps must be a non-negative integer, got {steps!r}"
    return None


def _array_kind_problem(name: str, array: np.ndarray) -> str | None:
    prefix = name.rstrip("0123456789")
    if prefix not in ARRAY_KINDS:
        return f"unexpected array {name!r} in the update"
    if array.dtype.kind not in ARRAY_KINDS[prefix] or array.dtype.fields is not None:
        expected = {"f": "floating point", "u": "unsigned integers", "iu": "integers"}[ARRAY_KINDS[prefix]]
        return f"array {name!r} must hold {expected}, got dtype {array.dtype.str}"
    return None


def payload_problem(payload: bytes, reference: Weights) -> str | None:
    """Why an encoded delta cannot be decoded against the model ``reference`` (before decoding it)."""
    arrays = deserialize(payload)
    for name, array in arrays.items():
        problem = _array_kind_problem(name, array)
        if problem is not None:
            return problem
    method = int(arrays["method"][0])
    if arrays["method"].shape != (1,) or not 0 <= method < len(COMPRESSIONS):
        return f"unknown compression code {arrays['method'].tolist()}"
    shapes = encoded_shapes(arrays["shapes"])
    expected = [tuple(w.shape) for w in reference]
    if shapes != expected:
        return f"update has shapes {shapes}, the model has {expected}"
    if COMPRESSIONS[method] == "topk":
        for index, shape in enumerate(shapes):
            indices = arrays[f"indices{index}"]
            if indices.size and (indices.min() < 0 or indices.max() >= math.prod(shape)):
                return f"top-k indices of array {index} fall outside its {math.prod(shape)} entries"
    return None


def decode_update(update: EncodedUpdate, reference: Weights) -> tuple[Weights | None, str | None]:
    """The device's model (``reference`` plus its delta, in the model's dtype), or why it is unusable.

    Checked: the container parses, every array has the kind its role allows (no
    strings, bytes, objects, records or dates), the shapes are the model's, and
    the result is finite *after* the cast to the model's dtype (a float64 1e300
    is finite, and inf once it is float32).
    """
    model = [np.empty_like(w) for w in reference]
    problem = decode_into(update, reference, model)
    return (None, problem) if problem is not None else (model, None)


def decode_into(update: EncodedUpdate, reference: Weights, model: Weights) -> str | None:
    """:func:`decode_update` into the preallocated arrays ``model`` (shaped and typed like ``reference``):
    what the server's running mean decodes each update into, so no update allocates a model."""
    try:
        problem = payload_problem(update.payload, reference)
        if problem is not None:
            return problem
        with np.errstate(over="ignore", invalid="ignore"):  # overflow in the cast is caught just below
            delta = decode_delta(update.payload)
    except DECODE_ERRORS as error:
        return f"malformed update: {type(error).__name__}: {error}"[:300]
    with np.errstate(over="ignore", invalid="ignore"):
        for out, w, d in zip(model, reference, delta):
            np.add(w, d, out=out, casting="unsafe")  # (w + d).astype(w.dtype), without the two temporaries
    return update_problem(model, reference)


def mean_of_updates(
    updates: Sequence[EncodedUpdate], reference: Weights, coefficient: Callable[[EncodedUpdate], float]
) -> tuple[Weights | None, list[EncodedUpdate], list[tuple[EncodedUpdate, str]]]:
    """The ``coefficient``-weighted mean of the usable updates' models, the accepted updates, and the rejected
    ones with why.

    Each update is decoded into one preallocated scratch model and added to a running float64 sum, so the
    server holds three models whatever the number of updates; the result equals
    ``weighted_average(decoded models, coefficients)`` exactly (same arithmetic, same order).
    """
    scratch = [np.empty_like(w) for w in reference]
    mean = RunningMean(reference)
    accepted: list[EncodedUpdate] = []
    rejected: list[tuple[EncodedUpdate, str]] = []
    for update in updates:
        problem = decode_into(update, reference, scratch)
        if problem is not None:
            rejected.append((update, problem))
            continue
        mean.add(scratch, coefficient(update))
        accepted.append(update)
    if not accepted:
        return None, accepted, rejected
    return [layer.astype(w.dtype) for layer, w in zip(mean.mean(), reference)], accepted, rejected


def control_delta_problem(control_delta: Weights, reference: Weights) -> str | None:
    """SCAFFOLD's control-variate change must be float arrays of the model's shapes, finite as float32."""
    if len(control_delta) != len(reference):
        return f"control-variate change has {len(control_delta)} arrays, the model has {len(reference)}"
    for index, (array, expected) in enumerate(zip(control_delta, reference)):
        array = np.asarray(array)
        if array.dtype.kind != "f" or array.dtype.fields is not None:
            return f"control-variate change array {index} must hold floating point, got dtype {array.dtype.str}"
        if array.shape != expected.shape:
            return f"control-variate change array {index} has shape {array.shape}, expected {expected.shape}"
        with np.errstate(over="ignore"):
            if not np.all(np.isfinite(array.astype(expected.dtype))):
                return f"control-variate change array {index} contains NaN or Inf"
    return None


def masked_problem(masked: object, size: int) -> str | None:
    """A secure-aggregation vector must be ``size`` unsigned 64-bit integers."""
    if not isinstance(masked, np.ndarray) or masked.dtype != np.uint64 or masked.shape != (size,):
        got = f"{masked.dtype.str} {masked.shape}" if isinstance(masked, np.ndarray) else type(masked).__name__
        return f"masked update must be {size} unsigned 64-bit integers, got {got}"
    return None


def reply_problem(update: EncodedUpdate, declared: int | None) -> str | None:
    """Why a reply's sample count or metrics cannot be used (its arrays are checked when decoded)."""
    return samples_problem(update.num_samples, declared) or metrics_problem(update.metrics)
