"""Flower run config and node config -> the engine's ``FederationConfig`` (no TensorFlow here).

The run config (``[tool.flwr.app.config]`` in ``pyproject.toml``, overridable
with ``flwr run --run-config``) is the same for the server and every node: what
to train and how. The node config (``flower-supernode --node-config``) is each
device's own: which partition it is and where its data lives.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from engine.config import FederationConfig
from flower_app.output_dir import confined_path, output_dir

# Defaults for keys missing from a run config; pyproject.toml sets the same values.
RUN_DEFAULTS: dict[str, Any] = {
    "num-server-rounds": 3,
    "strategy": "fedavg",
    "strategy-params": "",
    "dataset": "fashion-mnist",
    "model": "cnn",
    "partition": "iid",
    "alpha": 0.5,
    "shards-per-device": 2,
    "quantity-alpha": 1.0,
    "train-samples": 0,
    "local-test-fraction": 0.1,
    "seed": 0,
    "local-epochs": 1,
    "batch-size": 32,
    "learning-rate": 0.002,
    "optimizer": "adam",
    "momentum": 0.9,
    "fraction": 1.0,
    "min-devices": 1,
    "wait-timeout": 600.0,
    "round-timeout": 600.0,
    "test-samples": 0,
    "data-dir": "",
    "results-file": "",
    "deactivated": "",
    "deactivated-file": "",
    "faults": "",
    # -- privacy, compression, unreliability (hand-wired until run-config keys come from the settings) --
    "clip-norm": 0.0,
    "noise-multiplier": 0.0,
    "local-noise-multiplier": 0.0,
    "dp-delta": 1e-05,
    "compression": "none",
    "topk-fraction": 0.01,
    "dropout": 0.0,
    "round-deadline": 0.0,
    "runs-dir": "",
    "store-run-id": "",
}

# Run-config keys that decide what a node trains on; a node's cached device is keyed by them.
NODE_RUN_KEYS = (
    "dataset", "model", "partition", "alpha", "shards-per-device", "quantity-alpha", "train-samples",
    "local-test-fraction", "seed", "optimizer", "momentum", "faults",
)

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
NODE_DATA_DIR = "data-dir"
NODE_IMAGE_FOLDER = "image-folder"


def _get(run_config: Mapping[str, Any], key: str) -> Any:
    return run_config.get(key, RUN_DEFAULTS[key])


def _optional_positive(value: Any) -> int | None:
    number = int(value)
    return number if number > 0 else None


def _text(value: Any) -> str | None:
    text = str(value).strip()
    return text or None


def parse_ids(text: str | None) -> frozenset[int]:
    """Partition ids in ``"1,3"``, ``"1 3"``, one per line, or a JSON list ``[1, 3]``."""
    return frozenset(int(match) for match in re.findall(r"\d+", text or ""))


def parse_faults(text: str | None) -> dict[int, str]:
    """``"2=nan,3=crash"`` -> ``{2: "nan", 3: "crash"}`` (the engine's simulated faults)."""
    faults = {}
    for item in re.split(r"[,\s]+", (text or "").strip()):
        if not item:
            continue
        device, _, fault = item.partition("=")
        if not device.strip().isdigit() or not fault.strip():
            raise ValueError(f"fault {item!r} must look like DEVICE=FAULT, e.g. 3=crash")
        faults[int(device)] = fault.strip()
    return faults


def parse_params(text: str | None) -> dict[str, float]:
    """``"proximal_mu=0.1"`` -> ``{"proximal_mu": 0.1}`` (strategy hyper-parameters)."""
    params = {}
    for item in re.split(r"[,\s]+", (text or "").strip()):
        if not item:
            continue
        name, _, value = item.partition("=")
        try:
            params[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"strategy parameter {item!r} must look like NAME=NUMBER, e.g. proximal_mu=0.1") from None
    return params


def federation_config(
    run_config: Mapping[str, Any], num_devices: int, data_dir: str | None = None
) -> FederationConfig:
    """The engine configuration described by a Flower run config, validated."""
    return FederationConfig(
        dataset=str(_get(run_config, "dataset")),
        data_dir=data_dir,
        model=str(_get(run_config, "model")),
        num_devices=int(num_devices),
        partition=str(_get(run_config, "partition")),
        alpha=float(_get(run_config, "alpha")),
        shards_per_device=int(_get(run_config, "shards-per-device")),
        quantity_alpha=float(_get(run_config, "quantity-alpha")),
        rounds=int(_get(run_config, "num-server-rounds")),
        local_epochs=int(_get(run_config, "local-epochs")),
        batch_size=int(_get(run_config, "batch-size")),
        learning_rate=float(_get(run_config, "learning-rate")),
        optimizer=str(_get(run_config, "optimizer")),
        momentum=float(_get(run_config, "momentum")),
        min_devices=int(_get(run_config, "min-devices")),
        fraction=float(_get(run_config, "fraction")),
        seed=int(_get(run_config, "seed")),
        strategy=str(_get(run_config, "strategy")),
        strategy_params=parse_params(str(_get(run_config, "strategy-params"))),
        local_test_fraction=float(_get(run_config, "local-test-fraction")),
        train_samples=_optional_positive(_get(run_config, "train-samples")),
        test_samples=_optional_positive(_get(run_config, "test-samples")),
        faults=parse_faults(_get(run_config, "faults")),
        **_privacy_and_behaviour(run_config),
    ).validate()


def _optional_positive_float(value: Any) -> float | None:
    number = float(value)
    return number if number > 0 else None


def _privacy_and_behaviour(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The privacy, compression and simulated-unreliability fields (0 means off for the optional ones)."""
    return dict(
        clip_norm=_optional_positive_float(_get(run_config, "clip-norm")),
        noise_multiplier=float(_get(run_config, "noise-multiplier")),
        local_noise_multiplier=float(_get(run_config, "local-noise-multiplier")),
        dp_delta=float(_get(run_config, "dp-delta")),
        compression=str(_get(run_config, "compression")),
        topk_fraction=float(_get(run_config, "topk-fraction")),
        dropout=float(_get(run_config, "dropout")),
        round_deadline=_optional_positive_float(_get(run_config, "round-deadline")),
    )


@dataclass(frozen=True)
class ServerSettings:
    """What the ServerApp needs from the run config."""

    federation: FederationConfig  # num_devices is unknown up front: nodes announce their partitions
    rounds: int
    wait_timeout: float
    round_timeout: float
    results_file: Path | None
    deactivated: frozenset[int]
    deactivated_file: Path | None

    def deactivated_now(self) -> frozenset[int]:
        """Deactivated partition ids: the run config's plus the file's current content."""
        ids = self.deactivated
        if self.deactivated_file is not None:
            try:
                ids = ids | parse_ids(self.deactivated_file.read_text())
            except FileNotFoundError:
                pass  # no file yet: nothing deactivated by it
        return ids


def server_settings(run_config: Mapping[str, Any], folder: Path | None = None) -> ServerSettings:
    """The ServerApp's settings; file names are confined to ``folder`` (default: the output folder)."""
    folder = folder or output_dir()
    min_devices = int(_get(run_config, "min-devices"))
    data_dir = _text(_get(run_config, "data-dir"))
    results_file = _text(_get(run_config, "results-file"))
    deactivated_file = _text(_get(run_config, "deactivated-file"))
    federation = federation_config(run_config, num_devices=max(min_devices, 1), data_dir=data_dir)
    return ServerSettings(
        federation=federation.with_changes(faults={}),
        rounds=int(_get(run_config, "num-server-rounds")),
        wait_timeout=float(_get(run_config, "wait-timeout")),
        round_timeout=float(_get(run_config, "round-timeout")),
        results_file=confined_path("results-file", results_file, folder) if results_file else None,
        deactivated=parse_ids(str(_get(run_config, "deactivated"))),
        deactivated_file=confined_path("deactivated-file", deactivated_file, folder) if deactivated_file else None,
    )


@dataclass(frozen=True)
class NodeSpec:
    """Everything that decides a node's local device; hashable, so it can key a cache."""

    partition_id: int
    num_partitions: int
    data_dir: str | None
    image_folder: str | None
    run: tuple[tuple[str, Any], ...]  # the NODE_RUN_KEYS of the run config

    @property
    def source(self) -> str:
        return "image-folder" if self.image_folder else "partition"

    def federation(self) -> FederationConfig:
        """The engine configuration this node's partition is cut with (the same on every node)."""
        return federation_config(dict(self.run), num_devices=self.num_partitions, data_dir=self.data_dir)


def node_spec(node_config: Mapping[str, Any], run_config: Mapping[str, Any], node_id: int) -> NodeSpec:
    """Read a SuperNode's node config.

    ``partition-id`` and ``num-partitions`` pick the node's slice of the shared
    data set (the same cut as the in-process engine's devices). With
    ``image-folder`` the node trains on its own images instead, and
    ``partition-id`` only names it (default: the Flower node id).
    ``data-dir`` is where the data set's IDX files are (default: $FL_DATA_DIR).
    """
    image_folder = _text(node_config.get(NODE_IMAGE_FOLDER, ""))
    if PARTITION_ID in node_config:
        partition_id = int(node_config[PARTITION_ID])
    elif image_folder:
        partition_id = int(node_id)
    else:
        raise ValueError(
            f"node config needs {PARTITION_ID} and {NUM_PARTITIONS} (or {NODE_IMAGE_FOLDER}); "
            f"start the SuperNode with --node-config '{PARTITION_ID}=0 {NUM_PARTITIONS}=2'"
        )
    num_partitions = int(node_config.get(NUM_PARTITIONS, 1 if image_folder else 0))
    if not image_folder and not 0 <= partition_id < num_partitions:
        raise ValueError(f"{PARTITION_ID} must be in [0, {NUM_PARTITIONS}); got {partition_id} of {num_partitions}")
    data_dir = _text(node_config.get(NODE_DATA_DIR, "")) or os.environ.get("FL_DATA_DIR") or None
    return NodeSpec(
        partition_id=partition_id,
        num_partitions=num_partitions,
        data_dir=data_dir,
        image_folder=image_folder,
        run=tuple((key, _get(run_config, key)) for key in NODE_RUN_KEYS),
    )
