"""A list of arrays as one ``bytes`` value of a Flower ``ConfigRecord``: the fewest message parts, hence requests.

Flower 1.42 sends every part of a message (the message, its record dict,
each record, each ``Array`` and each of its 5 MB chunks) as its own HTTPS
request, on every hop: ServerApp -> SuperLink -> SuperNode -> ClientApp and
back. A CNN's 8 layers as 8 ``Array`` objects made a train message 20 parts;
packed into one ``uint8`` ``Array`` (``devices.codec.serialize``'s container: a
JSON header naming each array's dtype and shape, then the raw buffers) it was 6
(an ``ArrayRecord``, its ``Array`` and the array's chunk); the same buffer as
the one ``bytes`` value of a ``ConfigRecord`` (which Flower allows, and deflates
as one part whatever its size: nothing on Flower 1.42's HTTP hops limits a
part's length) it is one part, so a train message is 4 and a reply 3
(:mod:`flower_app.records`).

:func:`unpack` trusts nothing: the header must describe exactly the bytes
that follow (no short, long or trailing data), name its arrays ``0..n-1`` in
order, and give plain numeric dtypes (no strings, bytes, objects, records or
dates); anything else raises ``ValueError`` with what was received. Whether
the arrays are finite and of the model's shapes is the receiver's check per
layer (``engine.transport_checks.control_delta_problem`` for SCAFFOLD's reply),
exactly as when they travelled one by one.
"""

from __future__ import annotations

import json
import math

import numpy as np
from flwr.app import ConfigRecord

from devices.codec import serialize
from devices.messages import Weights

PACKED = "packed"  # the one key of a packed ConfigRecord
NUMERIC_KINDS = "biuf"  # booleans, integers, unsigned integers, floating point
MAX_ARRAYS = 100_000
MAX_DIMENSIONS = 32
MAX_DIMENSION = 2**40  # no array of a model is longer along any axis
HEADER_BYTES = 4  # the container's little-endian header length


def pack(weights: Weights) -> bytes:
    """``weights`` (any numeric dtypes and shapes) as one buffer; :func:`unpack` gives them back exactly."""
    return serialize({str(index): np.asarray(array) for index, array in enumerate(weights)})


def _layout(payload: bytes) -> list[tuple[np.dtype, tuple[int, ...]]]:
    """The (dtype, shape) of each packed array, checked against the length of ``payload``."""
    if len(payload) < HEADER_BYTES:
        raise ValueError(f"packed arrays need at least {HEADER_BYTES} bytes, got {len(payload)}")
    length = int.from_bytes(payload[:HEADER_BYTES], "little")
    if length > len(payload) - HEADER_BYTES:
        raise ValueError(f"packed header claims {length} bytes, only {len(payload) - HEADER_BYTES} follow")
    try:
        header = json.loads(payload[HEADER_BYTES:HEADER_BYTES + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"packed header is not JSON: {error}") from None
    if not isinstance(header, list) or len(header) > MAX_ARRAYS:
        raise ValueError(f"packed header must list at most {MAX_ARRAYS} arrays, got {type(header).__name__}")
    layout, data_bytes = [], 0
    for index, entry in enumerate(header):
        if not (isinstance(entry, list) and len(entry) == 3 and entry[0] == str(index)
                and isinstance(entry[1], str) and isinstance(entry[2], list)):
            raise ValueError(f"packed array {index} must be described as [{str(index)!r}, dtype, shape], "
                             f"got {str(entry)[:80]}")
        try:
            dtype = np.dtype(entry[1])
        except (TypeError, ValueError, SyntaxError):
            raise ValueError(f"packed array {index} has an unknown dtype {entry[1][:40]!r}") from None
        if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise ValueError(f"packed array {index} must hold numbers, got dtype {dtype.str}")
        shape = entry[2]
        if len(shape) > MAX_DIMENSIONS or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIMENSION for d in shape):
            raise ValueError(f"packed array {index} has an invalid shape {str(shape)[:80]}")
        layout.append((dtype, tuple(shape)))
        data_bytes += math.prod(shape) * dtype.itemsize
    if data_bytes != len(payload) - HEADER_BYTES - length:
        raise ValueError(f"packed arrays describe {data_bytes} bytes of data, "
                         f"{len(payload) - HEADER_BYTES - length} were received")
    return layout


def unpack(payload: bytes | bytearray) -> Weights:
    """The arrays :func:`pack` packed, or ``ValueError`` saying what is wrong.

    They are views of ``payload``: read-only for ``bytes``, writable for a ``bytearray``.
    """
    layout = _layout(payload)
    offset = HEADER_BYTES + int.from_bytes(payload[:HEADER_BYTES], "little")
    arrays = []
    for dtype, shape in layout:
        count = math.prod(shape)
        arrays.append(np.frombuffer(payload, dtype, count, offset).reshape(shape))
        offset += count * dtype.itemsize
    return arrays


def to_record(weights: Weights) -> ConfigRecord:
    """``weights`` as a ``ConfigRecord`` of one ``bytes`` value (:data:`PACKED`): one message part."""
    return ConfigRecord({PACKED: pack(weights)})


def from_bytes(packed: object, what: str = PACKED) -> Weights:
    """The arrays of one packed ``bytes`` value (``what`` names it in the error), or ``ValueError``."""
    if not isinstance(packed, bytes):
        raise ValueError(f"{what} must be bytes, got {type(packed).__name__}")
    return unpack(bytearray(packed))  # writable arrays, as Array.numpy() gives: a device may train in place


def from_record(record: ConfigRecord) -> Weights:
    """The arrays of a :func:`to_record` record, or ``ValueError`` when it is anything else."""
    keys = list(record.keys())
    if keys != [PACKED]:
        raise ValueError(f"expected one {PACKED!r} value, got {len(keys)} value(s) {keys[:5]}")
    return from_bytes(record[PACKED])
