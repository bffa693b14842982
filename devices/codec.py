"""Update compression and serialisation: what actually travels from device to server.

Plain functions. A device encodes its model delta (its trained weights minus
the global weights it received) into bytes; the server decodes them. Sizes are
counted on these bytes, so reported traffic is the real serialised size.

- ``none``: float32 deltas.
- ``q8`` / ``q4``: per-tensor linear quantisation to 8 or 4 bits (two values per byte).
- ``topk``: only the largest-magnitude ``topk_fraction`` of each tensor, as
  int32 indices and float32 values; the rest is kept by the device as error
  feedback and added to its next delta (Stich et al. 2018).
"""

from __future__ import annotations

import json

import numpy as np

from devices.messages import Weights

COMPRESSIONS = ("none", "q8", "q4", "topk")


def serialize(arrays: dict[str, np.ndarray]) -> bytes:
    """A compact container: a length-prefixed JSON header naming each array, then the raw buffers."""
    header = json.dumps([[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]).encode()
    return b"".join([len(header).to_bytes(4, "little"), header, *(np.ascontiguousarray(a).tobytes() for a in arrays.values())])


def deserialize(payload: bytes) -> dict[str, np.ndarray]:
    length = int.from_bytes(payload[:4], "little")
    offset = 4 + length
    arrays = {}
    for name, dtype, shape in json.loads(payload[4:offset]):
        count = int(np.prod(shape, dtype=np.int64))
        arrays[name] = np.frombuffer(payload, np.dtype(dtype), count, offset).reshape(shape)
        offset += count * np.dtype(dtype).itemsize
    return arrays


def quantize(values: np.ndarray, bits: int) -> tuple[np.ndarray, float, float]:
    """Linear quantisation of ``values`` to ``bits`` bits: (codes as uint8, offset, step)."""
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    levels = (1 << bits) - 1
    step = (high - low) / levels if high > low else 1.0
    with np.errstate(invalid="ignore"):  # a NaN update stays NaN through the offset; the server rejects it
        codes = np.clip(np.rint((values - low) / step), 0, levels).astype(np.uint8)
    return codes, low, step


def dequantize(codes: np.ndarray, offset: float, step: float) -> np.ndarray:
    return (codes.astype(np.float32) * np.float32(step) + np.float32(offset)).astype(np.float32)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Two 4-bit codes per byte."""
    flat = codes.ravel()
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, size: int) -> np.ndarray:
    return np.stack([packed & 0x0F, packed >> 4], axis=1).ravel()[:size]


def top_k(values: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (int32) and values of the ``fraction`` largest-magnitude entries (at least one)."""
    flat = values.ravel()
    k = max(1, int(round(flat.size * fraction)))
    indices = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k:].astype(np.int32)
    return np.sort(indices), flat[np.sort(indices)]


def encode_delta(delta: Weights, method: str, topk_fraction: float = 0.01) -> tuple[bytes, Weights]:
    """Serialise ``delta`` with ``method``; returns the bytes and the delta the server will decode."""
    arrays: dict[str, np.ndarray] = {"method": np.array([COMPRESSIONS.index(method)], np.uint8)}
    decoded: Weights = []
    for i, tensor in enumerate(delta):
        tensor = np.asarray(tensor, np.float32)
        if method == "none":
            arrays[f"values{i}"] = tensor
            decoded.append(tensor)
        elif method in ("q8", "q4"):
            bits = 8 if method == "q8" else 4
            codes, offset, step = quantize(tensor, bits)
            arrays[f"codes{i}"] = codes.ravel() if bits == 8 else pack_nibbles(codes)
            arrays[f"scale{i}"] = np.array([offset, step], np.float32)
            decoded.append(dequantize(codes, offset, step).reshape(tensor.shape))
        elif method == "topk":
            indices, values = top_k(tensor, topk_fraction)
            arrays[f"indices{i}"], arrays[f"values{i}"] = indices, values
            dense = np.zeros(tensor.size, np.float32)
            dense[indices] = values
            decoded.append(dense.reshape(tensor.shape))
        else:
            raise ValueError(f"unknown compression {method!r}; choose one of {', '.join(COMPRESSIONS)}")
    arrays["shapes"] = np.array([len(delta)] + [d for t in delta for d in (np.ndim(t), *np.shape(t))], np.int64)
    return serialize(arrays), decoded


def decode_delta(payload: bytes) -> Weights:
    """Inverse of :func:`encode_delta` (lossy methods give back their quantised/sparse delta).

    Uncompressed float32 deltas come back as read-only views of ``payload``, not copies: the server
    only reads them while it accumulates the mean.
    """
    arrays = deserialize(payload)
    method = COMPRESSIONS[int(arrays["method"][0])]
    delta = []
    for i, shape in enumerate(_shapes(arrays["shapes"])):
        size = int(np.prod(shape))
        if method == "none":
            delta.append(arrays[f"values{i}"].astype(np.float32, copy=False).reshape(shape))
        elif method in ("q8", "q4"):
            codes = arrays[f"codes{i}"] if method == "q8" else unpack_nibbles(arrays[f"codes{i}"], size)
            offset, step = (float(v) for v in arrays[f"scale{i}"])
            delta.append(dequantize(codes, offset, step).reshape(shape))
        else:
            dense = np.zeros(size, np.float32)
            dense[arrays[f"indices{i}"]] = arrays[f"values{i}"]
            delta.append(dense.reshape(shape))
    return delta


def _shapes(encoded: np.ndarray) -> list[tuple[int, ...]]:
    shapes, position = [], 1
    for _ in range(int(encoded[0])):
        ndim = int(encoded[position])
        shapes.append(tuple(int(d) for d in encoded[position + 1:position + 1 + ndim]))
        position += 1 + ndim
    return shapes
