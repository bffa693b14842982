"""Flower run config and node config -> the engine's ``FederationConfig`` (no TensorFlow here).

The run config (``[tool.flwr.app.config]`` in ``pyproject.toml``, overridable
with ``flwr run --run-config``) is the same for the server and every node: what
to train and how. The node config (``flower-supernode --node-config``) is each
device's own: which partition it is and where its data lives.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from engine.config import ConfigError, FederationConfig
from engine.settings import declared_settings, kinds
from engine.strategies import STRATEGIES
from flower_app.output_dir import confined_folder, confined_path, output_dir, runs_root

UNTIL_STOPPED_ROUNDS = 1_000_000  # rounds=None ("until stopped"): Flower needs a number

# Run-config keys are the settings' dashed field names (``shards_per_device`` ->
# ``shards-per-device``), generated from engine.config's declarations, except:
RUN_KEY_ALIASES = {"rounds": "num-server-rounds"}  # Flower's customary name
NOT_IN_RUN_CONFIG = ("num_devices",)  # the SuperNodes' partitions decide it

# Keys only the ServerApp reads (not FederationConfig fields).
SERVER_DEFAULTS: dict[str, Any] = {
    "wait-timeout": 600.0,  # seconds to wait for enough active devices before giving up
    "round-timeout": 600.0,  # seconds to wait for the replies of one round
    "results-file": "",  # one JSON line per round is appended here
    "weights-file": "",  # the global model after each round is saved here (.npz)
    "deactivated": "",  # partition ids never selected, e.g. "1,3"
    "deactivated-file": "",  # re-read every round: partition ids to skip
    "runs-dir": "",  # record the run in this run store folder (resume, compare, export)
    "store-run-id": "",  # a run already created in runs-dir to record into ("": a new one)
}

# Keys the server and every node read (not FederationConfig fields): see flower_app.byod.
DATA_DEFAULTS: dict[str, Any] = {
    "preprocessing": "",  # the server's data set's preprocessing (base64 JSON): nodes encode their own data with it
}


def run_keys() -> dict[str, str]:
    """FederationConfig field -> run-config key, for every declared field Flower's run config carries."""
    return {f.name: RUN_KEY_ALIASES.get(f.name, f.name.replace("_", "-"))
            for f, _ in declared_settings(FederationConfig) if f.name not in NOT_IN_RUN_CONFIG}


def config_run_values(config: FederationConfig) -> dict[str, Any]:
    """``config`` as run-config values (TOML scalars): ``None`` -> 0 / "", mappings -> ``"k=v,k=v"``."""
    config_kinds = kinds(FederationConfig)
    values = {key: config_kinds[name].plain(getattr(config, name)) for name, key in run_keys().items()}
    if config.rounds is None:
        values[RUN_KEY_ALIASES["rounds"]] = UNTIL_STOPPED_ROUNDS
    return values


# Defaults for keys missing from a run config; pyproject.toml sets the same values (a test checks).
RUN_DEFAULTS: dict[str, Any] = {**config_run_values(FederationConfig()), **SERVER_DEFAULTS, **DATA_DEFAULTS}

# Run-config keys that decide what a node trains on; a node's cached device is keyed by them.
NODE_RUN_KEYS = (
    "dataset", "model", "partition", "alpha", "shards-per-device", "quantity-alpha", "train-samples",
    "local-test-fraction", "seed", "optimizer", "momentum", "faults",
    "image-size", "color", "target", "task", "device-column", "preprocessing",
)

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
NODE_DATA_DIR = "data-dir"
NODE_IMAGE_FOLDER = "image-folder"
NODE_DATA = "data"  # the node's own folder, CSV or .npz (flower_app.byod)
NODE_MODEL_FILE = "model-file"  # the node's own copy of the run's model file (flower_app.byod.node_model)


def _get(run_config: Mapping[str, Any], key: str) -> Any:
    return run_config.get(key, RUN_DEFAULTS[key])


def _text(value: Any) -> str | None:
    text = str(value).strip()
    return text or None


def parse_ids(text: str | None) -> frozenset[int]:
    """Partition ids in ``"1,3"``, ``"1 3"``, one per line, or a JSON list ``[1, 3]``."""
    return frozenset(int(match) for match in re.findall(r"\d+", text or ""))


def parse_faults(text: str | None) -> dict[int, str]:
    """``"2=nan,3=crash"`` -> ``{2: "nan", 3: "crash"}`` (the engine's simulated faults)."""
    return kinds(FederationConfig)["faults"].parse(text or "")


def parse_params(text: str | None) -> dict[str, float]:
    """``"proximal_mu=0.1"`` -> ``{"proximal_mu": 0.1}`` (strategy hyper-parameters)."""
    return kinds(FederationConfig)["strategy_params"].parse(text or "")


def config_values(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The FederationConfig fields a run config describes (missing keys: :data:`RUN_DEFAULTS`)."""
    config_kinds, values = kinds(FederationConfig), {}
    for name, key in run_keys().items():
        try:
            values[name] = config_kinds[name].from_plain(_get(run_config, key))
        except ValueError as error:
            raise ValueError(f"run-config key {key}: {error}") from None
    rounds = values["rounds"]
    values["rounds"] = None if rounds is not None and rounds >= UNTIL_STOPPED_ROUNDS else rounds
    return values


def federation_config(
    run_config: Mapping[str, Any], num_devices: int, data_dir: str | None = None
) -> FederationConfig:
    """The engine configuration described by a Flower run config, validated.

    ``num_devices`` (the partitions) and ``data_dir`` (this machine's folder) are
    not the run config's: the deployment decides them.
    """
    values = config_values(run_config) | {"num_devices": int(num_devices), "data_dir": data_dir}
    config = FederationConfig(**values)
    reason = STRATEGIES[config.strategy].in_process_only if config.strategy in STRATEGIES else ""
    if reason:
        raise ConfigError([f"{config.strategy} runs in-process only: {reason}"])
    if config.secure_aggregation and config.min_devices < 2:
        raise ConfigError(["secure aggregation on Flower (its SecAgg+) needs at least 2 devices per round; "
                           "set min-devices to 2 or more"])
    return config.validate(devices_known=False)  # nodes announce themselves: too few updates are reported per round


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
    runs_dir: Path | None = None  # the run store to record into, inside the server's runs folder

    def deactivated_now(self) -> frozenset[int]:
        """Deactivated partition ids: the run config's plus the file's current content."""
        ids = self.deactivated
        if self.deactivated_file is not None:
            try:
                ids = ids | parse_ids(self.deactivated_file.read_text())
            except FileNotFoundError:
                pass  # no file yet: nothing deactivated by it
        return ids


def server_settings(
    run_config: Mapping[str, Any], folder: Path | None = None, runs_folder: Path | None = None
) -> ServerSettings:
    """The ServerApp's settings; file names are confined to ``folder`` (default: the output folder), and
    ``runs-dir`` to ``runs_folder`` (default: ``flower_app.output_dir.runs_root``)."""
    folder = folder or output_dir()
    runs_dir = _text(_get(run_config, "runs-dir"))
    min_devices = int(_get(run_config, "min-devices"))
    data_dir = _text(_get(run_config, "data-dir"))
    results_file = _text(_get(run_config, "results-file"))
    deactivated_file = _text(_get(run_config, "deactivated-file"))
    federation = federation_config(run_config, num_devices=max(min_devices, 1), data_dir=data_dir)
    return ServerSettings(
        federation=federation.with_changes(faults={}),
        rounds=federation.rounds or UNTIL_STOPPED_ROUNDS,
        wait_timeout=float(_get(run_config, "wait-timeout")),
        round_timeout=float(_get(run_config, "round-timeout")),
        results_file=confined_path("results-file", results_file, folder) if results_file else None,
        deactivated=parse_ids(str(_get(run_config, "deactivated"))),
        deactivated_file=confined_path("deactivated-file", deactivated_file, folder) if deactivated_file else None,
        runs_dir=confined_folder("runs-dir", runs_dir, runs_folder or runs_root()) if runs_dir else None,
    )


@dataclass(frozen=True)
class NodeSpec:
    """Everything that decides a node's local device; hashable, so it can key a cache."""

    partition_id: int
    num_partitions: int
    data_dir: str | None
    image_folder: str | None
    run: tuple[tuple[str, Any], ...]  # the NODE_RUN_KEYS of the run config
    data: str | None = None
    model_file: str | None = None

    @property
    def source(self) -> str:
        return "data" if self.data else "image-folder" if self.image_folder else "partition"

    @property
    def own_files(self) -> str | None:
        """The node's own data (``data`` or ``image-folder``), None when it holds a partition."""
        return self.data or self.image_folder

    def federation(self) -> FederationConfig:
        """The engine configuration this node's partition is cut with (the same on every node)."""
        return federation_config(dict(self.run), num_devices=self.num_partitions, data_dir=self.data_dir)


def node_spec(node_config: Mapping[str, Any], run_config: Mapping[str, Any], node_id: int) -> NodeSpec:
    """Read a SuperNode's node config.

    ``partition-id`` and ``num-partitions`` pick the node's slice of the shared
    data set (the same cut as the in-process engine's devices). With
    ``image-folder`` the node trains on its own images instead, and
    ``partition-id`` only names it (default: the Flower node id); with
    ``data`` (a folder, CSV or ``.npz``) it trains on its own files encoded
    with the run's declared preprocessing (``flower_app.byod``), and
    ``model-file`` is its own copy of the run's model file, if it uses one.
    ``data-dir`` is where the data set's IDX files are (default: $FL_DATA_DIR).
    """
    image_folder = _text(node_config.get(NODE_IMAGE_FOLDER, ""))
    data = _text(node_config.get(NODE_DATA, ""))
    own = image_folder or data
    if PARTITION_ID in node_config:
        partition_id = int(node_config[PARTITION_ID])
    elif own:
        partition_id = int(node_id)
    else:
        raise ValueError(
            f"node config needs {PARTITION_ID} and {NUM_PARTITIONS} (or {NODE_DATA} or {NODE_IMAGE_FOLDER}); "
            f"start the SuperNode with --node-config '{PARTITION_ID}=0 {NUM_PARTITIONS}=2'"
        )
    num_partitions = int(node_config.get(NUM_PARTITIONS, 1 if own else 0))
    if not own and not 0 <= partition_id < num_partitions:
        raise ValueError(f"{PARTITION_ID} must be in [0, {NUM_PARTITIONS}); got {partition_id} of {num_partitions}")
    data_dir = _text(node_config.get(NODE_DATA_DIR, "")) or os.environ.get("FL_DATA_DIR") or None
    return NodeSpec(
        partition_id=partition_id,
        num_partitions=num_partitions,
        data_dir=data_dir,
        image_folder=image_folder,
        run=tuple((key, _get(run_config, key)) for key in NODE_RUN_KEYS),
        data=data,
        model_file=_text(node_config.get(NODE_MODEL_FILE, "")),
    )


def toml_value(value: object) -> str:
    """A run-config value as ``flwr run --run-config`` parses it (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def run_config_arg(values: Mapping[str, object]) -> str:
    """``flwr run --run-config``'s argument for ``values``: ``key=value`` pairs, each value in TOML."""
    return " ".join(f"{key}={toml_value(value)}" for key, value in values.items())
