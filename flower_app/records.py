"""Our messages <-> Flower records: the only translation between the two worlds.

Every part of a message (the message, its record dict, each record, each
``Array`` and each of its chunks) is one request on every hop, so arrays travel
packed (:mod:`flower_app.wire`) as ``bytes`` values of ``ConfigRecord``\ s, one
part each.

Down: ``TrainInstructions`` -> a ``ConfigRecord`` ``arrays`` holding the global
weights packed (the same record for every device of a round, so the SuperLink
stores and receives it once) and a ``ConfigRecord`` ``config`` (round, epochs,
batch size, learning rate, seed, FedProx's mu, clipping norm, local noise,
compression; SCAFFOLD's local momentum; under ``--personalize`` every
``Personalization`` field as ``personal-<field>``) and, for SCAFFOLD, the
server's control variate c as a third packed record: 4 parts (5 with c).
Up: ``EncodedUpdate`` (what ``Device.respond`` sends in-process: the clipped,
noised, compressed delta as bytes) -> one ``ConfigRecord`` ``update`` holding
those bytes (``payload``), ``num-examples``, ``partition-id`` and every
``DeviceMetrics`` field, with dashes (``train-loss``, ``local-accuracy`` ...),
plus SCAFFOLD's packed control-variate change (``control-delta``): 3 parts.
A config record carries any type Flower allows (strings, bytes, booleans,
lists) where a ``MetricRecord`` held only numbers, so the round loop's checks
(``engine.transport_checks``) see every value as sent and refuse what is not a
number of the right kind. Bytes up are the payload's length, as in-process.

Nothing read from a reply is trusted: :func:`encoded_from` and
:func:`node_from` return a reason instead of raising on anything malformed.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Mapping

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from devices.messages import (
    ControlVariate, DeviceMetrics, DeviceUpdate, EncodedUpdate, Personalization, PrivacySettings, TrainInstructions,
    Weights,
)
from engine.results import RoundResult
from flower_app import wire

ARRAYS = "arrays"  # down: the global weights, packed
CONFIG = "config"
UPDATE = "update"  # up: the encoded update's bytes and the device's metrics
NODE = "node"  # query replies: which partition a node holds
PAYLOAD = "payload"  # the encoded update's bytes, in the update record
CONTROL = "control"  # SCAFFOLD: the server's control variate c, down (absent while it is zero)
CONTROL_DELTA = "control-delta"  # SCAFFOLD: how the device's own control variate c_i changed, up
DEVICE_CONTROL = "device-control"  # SCAFFOLD: the device's own c_i from the run store, down to a resumed device

PERSONAL = "personal-"  # --personalize: the config keys of the Personalization fields, e.g. personal-mode

NUM_EXAMPLES = "num-examples"
PARTITION_ID = "partition-id"
METRIC_FIELDS = tuple(field.name for field in dataclasses.fields(DeviceMetrics))
# metrics with a default (e.g. the personalised ones) may be left out: a run without them reports NaN
OPTIONAL_METRICS = frozenset(field.name for field in dataclasses.fields(DeviceMetrics)
                             if field.default is not dataclasses.MISSING)


def _dashed(name: str) -> str:
    return name.replace("_", "-")


def to_arrays(weights: Weights) -> ConfigRecord:
    """``weights`` packed as one value (:mod:`flower_app.wire`): 1 message part instead of 2 per layer + 1."""
    return wire.to_record(weights)


def to_weights(arrays: ConfigRecord) -> Weights:
    """The arrays of a :func:`to_arrays` record (``ValueError`` saying why when it is not one)."""
    return wire.from_record(arrays)


def carried_bytes(content: RecordDict) -> int:
    """The bytes of every ``bytes`` value in ``content``'s config records: the packed arrays a message carries."""
    return sum(len(value) for record in content.config_records.values() for value in record.values()
               if isinstance(value, bytes))


def instructions_content(instructions: TrainInstructions, arrays: ConfigRecord | None = None) -> RecordDict:
    """A train message's content (pass ``arrays`` to reuse an already-built global :func:`to_arrays` record:
    the same part in every device's message)."""
    config = ConfigRecord(
        {
            "server-round": int(instructions.server_round),
            "local-epochs": int(instructions.local_epochs),
            "batch-size": int(instructions.batch_size),
            "learning-rate": float(instructions.learning_rate),
            "seed": int(instructions.seed),
            "proximal-mu": float(instructions.proximal_mu),
            "clip-norm": float(instructions.privacy.clip_norm or 0.0),
            "local-noise-multiplier": float(instructions.privacy.local_noise_multiplier),
            "compression": str(instructions.compression),
            "topk-fraction": float(instructions.topk_fraction),
            "keep-optimizer-state": bool(instructions.keep_optimizer_state),
        }
    )
    content = RecordDict({ARRAYS: arrays if arrays is not None else to_arrays(instructions.weights), CONFIG: config})
    if instructions.control is not None:
        config["control-momentum"] = float(instructions.control.local_momentum)
        if instructions.control.weights is not None:
            content.config_records[CONTROL] = to_arrays(instructions.control.weights)
        if instructions.control.device_weights is not None:
            content.config_records[DEVICE_CONTROL] = to_arrays(instructions.control.device_weights)
    if instructions.personal is not None:
        config.update(personal_config(instructions.personal))
    return content


def personal_config(personal: Personalization) -> dict[str, int | float | str]:
    """``personal`` as config values, one ``personal-<field>`` key per ``Personalization`` field (generated from
    the dataclass, so a new field travels too); a tuple (FedPer's head positions) as ``"4,5"``, since Flower's
    legacy ``FitIns`` config (the SecAgg+ path) takes scalars only."""
    values: dict[str, int | float | str] = {}
    for field in dataclasses.fields(Personalization):
        value = getattr(personal, field.name)
        values[PERSONAL + _dashed(field.name)] = ",".join(str(int(v)) for v in value) if isinstance(value, tuple) \
            else value
    return values


def _personal_from(config: Mapping[str, object]) -> Personalization | None:
    """The inverse of :func:`personal_config` (None: the message carries no personalisation)."""
    if PERSONAL + "mode" not in config:
        return None
    types = typing.get_type_hints(Personalization)
    values = {}
    for field in dataclasses.fields(Personalization):
        key = PERSONAL + _dashed(field.name)
        if key not in config:
            continue  # a field the sender does not know: its default
        raw = config[key]
        if typing.get_origin(types[field.name]) is tuple:
            values[field.name] = tuple(int(part) for part in str(raw).split(",") if part.strip())
        else:
            values[field.name] = types[field.name](raw)
    return Personalization(**values)


def instructions_from(content: RecordDict) -> TrainInstructions:
    config = content.config_records[CONFIG]
    return TrainInstructions(
        server_round=int(config["server-round"]),
        weights=to_weights(content.config_records[ARRAYS]),
        local_epochs=int(config["local-epochs"]),
        batch_size=int(config["batch-size"]),
        learning_rate=float(config["learning-rate"]),
        seed=int(config["seed"]),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        privacy=PrivacySettings(float(config.get("clip-norm", 0.0)) or None,
                                float(config.get("local-noise-multiplier", 0.0))),
        compression=str(config.get("compression", "none")),
        topk_fraction=float(config.get("topk-fraction", 0.01)),
        keep_optimizer_state=bool(config.get("keep-optimizer-state", False)),
        control=_control_from(content),
        personal=_personal_from(config),
    )


def _control_from(content: RecordDict) -> ControlVariate | None:
    config = content.config_records[CONFIG]
    if "control-momentum" not in config:
        return None
    parts = content.config_records
    weights = to_weights(parts[CONTROL]) if CONTROL in parts else None
    own = to_weights(parts[DEVICE_CONTROL]) if DEVICE_CONTROL in parts else None
    return ControlVariate(weights, float(config["control-momentum"]), own)


def update_metrics(update: EncodedUpdate, extras: Mapping[str, float] | None = None) -> dict[str, int | float]:
    """A train reply's metrics: ``num-examples``, ``partition-id``, the ``DeviceMetrics`` and ``extras``."""
    metrics: dict[str, int | float] = {NUM_EXAMPLES: int(update.num_samples), PARTITION_ID: int(update.device_id)}
    for name in METRIC_FIELDS:
        value = getattr(update.metrics, name)
        metrics[_dashed(name)] = int(value) if name == "steps" else float(value)
    for name, value in (extras or {}).items():
        metrics[_dashed(name)] = float(value)
    return metrics


def update_content(update: EncodedUpdate, extras: Mapping[str, float] | None = None) -> RecordDict:
    """A train reply's content, one config record; ``extras`` (e.g. ``setup_seconds``) travel as further metrics."""
    record = ConfigRecord({PAYLOAD: bytes(update.payload), **update_metrics(update, extras)})
    if update.control_delta is not None:
        record[CONTROL_DELTA] = wire.pack(update.control_delta)
    return RecordDict({UPDATE: record})


def _metric(metrics: Mapping[str, object], name: str) -> object:
    if name not in metrics:
        raise ValueError(f"the reply has no {name!r} metric")
    return metrics[name]


def update_from(content: RecordDict, device_id: int) -> tuple[EncodedUpdate, dict] | str:
    """The ``EncodedUpdate`` and extra metrics of a train reply from ``device_id``, or why it is malformed.

    Types are kept as received (a float or string ``num-examples`` stays one) so the round loop's checks
    (``engine.transport_checks``) see what the device really sent.
    """
    try:
        if UPDATE not in content.config_records:
            return f"the reply has no {UPDATE!r} config record"
        record = content.config_records[UPDATE]
        payload = record.get(PAYLOAD)
        if not isinstance(payload, bytes):
            return f"the reply's {PAYLOAD!r} must be bytes, got {type(payload).__name__}"
        control_delta = None
        if CONTROL_DELTA in record:  # checked per layer in the loop
            control_delta = wire.from_bytes(record[CONTROL_DELTA], CONTROL_DELTA)
        metrics = {key: value for key, value in record.items() if key not in (PAYLOAD, CONTROL_DELTA)}
        if not metrics:
            return f"the reply's {UPDATE!r} record has no metrics"
        return metered_update(metrics, device_id, payload=payload, control_delta=control_delta)
    except (KeyError, TypeError, ValueError, EOFError, OSError) as error:
        return f"malformed reply: {type(error).__name__}: {error}"[:300]


def metered_update(
    metrics: Mapping[str, object], device_id: int, payload: bytes = b"", masked: np.ndarray | None = None,
    control_delta: Weights | None = None,
) -> tuple[EncodedUpdate, dict]:
    """The ``EncodedUpdate`` a reply's ``metrics`` describe, and its extra metrics that are numbers (raises if
    a metric is missing)."""
    values = {name: _metric(metrics, _dashed(name)) for name in METRIC_FIELDS
              if name not in OPTIONAL_METRICS or _dashed(name) in metrics}
    update = EncodedUpdate(device_id, _metric(metrics, NUM_EXAMPLES), DeviceMetrics(**values),  # type: ignore
                           payload=payload, masked=masked, control_delta=control_delta)
    known = {NUM_EXAMPLES, PARTITION_ID, *(_dashed(name) for name in METRIC_FIELDS)}
    extras = {key.replace("-", "_"): value for key, value in metrics.items()  # only numbers: nothing else is used
              if key not in known and isinstance(value, (int, float)) and not isinstance(value, bool)}
    return update, extras


def decoded_update(update: EncodedUpdate, weights: Weights) -> DeviceUpdate:
    """The trained model an honest reply carries (tests and tools; the server decodes in the round loop)."""
    from devices.codec import decode_delta

    model = [(w + d).astype(w.dtype) for w, d in zip(weights, decode_delta(update.payload))]
    return DeviceUpdate(update.device_id, model, int(update.num_samples), update.metrics)


def node_content(partition_id: int, num_partitions: int, source: str, num_examples: int) -> RecordDict:
    """A query reply: the partition this node trains on and how many training samples it holds."""
    return RecordDict({NODE: ConfigRecord({PARTITION_ID: int(partition_id), "num-partitions": int(num_partitions),
                                           "source": source, NUM_EXAMPLES: int(num_examples)})})


def node_from(content: RecordDict) -> tuple[int, int] | str:
    """(partition id, declared training samples) from a query reply, or why the reply is unusable."""
    if NODE not in content.config_records:
        return f"the query reply has no {NODE!r} config record"
    node = content.config_records[NODE]
    partition, declared = node.get(PARTITION_ID), node.get(NUM_EXAMPLES)
    for name, value in ((PARTITION_ID, partition), (NUM_EXAMPLES, declared)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{name} must be a non-negative integer, got {value!r}"
    return int(partition), int(declared)  # type: ignore[arg-type]


def finite_or_none(value: object) -> float | None:
    """JSON has no NaN or inf: such metrics (e.g. an empty local test split's loss) and non-numbers become null."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def round_record(
    result: RoundResult, nodes: Mapping[int, int], deactivated: frozenset[int], run_id: int | None,
    extras: Mapping[int, Mapping[str, object]] | None = None, refused: Mapping[int, str] | None = None,
) -> dict:
    """One round as a results-file JSON line (``flower_app.backend.round_result`` reads it back).

    Every number that is not finite becomes null, so writing it never fails.
    """
    number = finite_or_none
    extras = extras or {}
    return {
        "run_id": run_id,
        "round": result.round,
        "global_accuracy": number(result.global_accuracy),
        "global_loss": number(result.global_loss),
        "global_mae": None if result.global_mae is None else number(result.global_mae),  # regression runs
        "global_r2": None if result.global_r2 is None else number(result.global_r2),
        "seconds": number(result.seconds),
        "train_seconds": number(result.train_seconds),
        "eval_seconds": number(result.eval_seconds),
        "selected": list(result.selected),
        "deactivated": sorted(deactivated),
        "bytes_down": result.bytes_down,
        "bytes_up": result.bytes_up,
        "raw_bytes_up": result.raw_bytes_up,
        "epsilon": None if result.epsilon is None else number(result.epsilon),
        "sampling_rate": number(result.sampling_rate),
        # --personalize: the devices' mean on their own held-out data, personalised and global (null without it)
        "personalized_accuracy": number(result.personalized_accuracy),  # None -> null, like NaN
        "device_global_accuracy": number(result.device_global_accuracy),
        "simulated_time": number(result.simulated_time),  # FedBuff on Flower: wall-clock seconds of the step
        "devices": {
            str(d.device_id): {
                "node_id": nodes.get(d.device_id),
                "samples": d.samples,
                "train_loss": number(d.train_loss),
                "train_accuracy": number(d.train_accuracy),
                "received_accuracy": number(d.received_accuracy),
                "loss": number(d.loss),
                "accuracy": number(d.accuracy),
                "seconds": number(d.seconds),
                "bytes_up": d.bytes_up,
                "personalized_accuracy": number(d.personalized_accuracy),
                "personalized_loss": number(d.personalized_loss),
                "staleness": d.staleness,  # FedBuff: server steps since the model it trained from (else 0)
                **{str(k): number(v) for k, v in extras.get(d.device_id, {}).items()},  # e.g. setup_seconds
            }
            for d in result.devices
        },
        "problems": [
            {"partition_id": p.device_id, "node_id": nodes.get(p.device_id), "kind": p.kind, "reason": p.reason}
            for p in result.problems
        ],
        "refused_nodes": {str(node): reason for node, reason in sorted((refused or {}).items())},
        "confusion": np.asarray(result.confusion).tolist(),
    }
