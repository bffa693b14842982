"""Whether a configuration can train on a loaded data set, checked before any model is built."""

from __future__ import annotations

from data.datasets import Dataset
from data.partition import LABEL_SCHEMES
from engine.config import FederationConfig
from engine.model_defaults import model_task_problem
from engine.settings import option_name, use_value


def data_problem(dataset: Dataset, config: FederationConfig, audience: str = "cli") -> str | None:
    """Why this configuration cannot train on ``dataset`` (None: it can), naming settings as ``audience`` knows
    them (``engine.settings.AUDIENCES``: the CLI's flags or the dashboard's labels)."""
    if dataset.task == "regression" and config.partition in LABEL_SCHEMES:
        return f"partition {config.partition} splits by class label; a regression supports iid, quantity and natural"
    if config.partition == "natural":
        if dataset.train_groups is None:
            return ("the natural partition needs per-device data: ROOT/devices/<device>/<class>/ folders or a "
                    f"CSV's {option_name(FederationConfig, 'device_column', audience)}")
        if config.num_devices != len(dataset.group_names):
            count = len(dataset.group_names)
            return f"the data has {count} devices; {use_value(FederationConfig, 'num_devices', count, audience)}"
    samples = min(len(dataset.y_train), config.train_samples or len(dataset.y_train))
    if samples < config.num_devices:
        return f"{samples} training samples cannot be split across {config.num_devices} devices"
    return model_task_problem(config.model, dataset.task)
