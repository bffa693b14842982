"""Whether a configuration can train on a loaded data set, checked before any model is built."""

from __future__ import annotations

from data.datasets import Dataset
from data.partition import LABEL_SCHEMES
from engine.config import FederationConfig
from engine.model_defaults import model_task_problem


def data_problem(dataset: Dataset, config: FederationConfig) -> str | None:
    """Why this configuration cannot train on ``dataset`` (None: it can)."""
    if dataset.task == "regression" and config.partition in LABEL_SCHEMES:
        return f"partition {config.partition} splits by class label; a regression supports iid, quantity and natural"
    if config.partition == "natural":
        if dataset.train_groups is None:
            return ("the natural partition needs per-device data: ROOT/devices/<device>/<class>/ folders or a "
                    "CSV --device-column")
        if config.num_devices != len(dataset.group_names):
            return f"the data has {len(dataset.group_names)} devices; use --devices {len(dataset.group_names)}"
    samples = min(len(dataset.y_train), config.train_samples or len(dataset.y_train))
    if samples < config.num_devices:
        return f"{samples} training samples cannot be split across {config.num_devices} devices"
    return model_task_problem(config.model, dataset.task)
