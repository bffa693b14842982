"""Default setup values, optionally overridden by environment variables (demos, tests, screenshots).

=========================== ==========================================================
Variable                    Meaning
=========================== ==========================================================
``FL_DATA_DIR``             folder with the IDX files (read by the engine; shown as the
                            default "data folder")
``FL_DEFAULT_DATASET``      ``fashion-mnist`` or ``mnist``
``FL_DEFAULT_MODEL``        ``cnn`` or ``mlp``
``FL_DEFAULT_DEVICES``      number of devices
``FL_DEFAULT_PARTITION``    ``iid``, ``dirichlet``, ``shards`` or ``quantity``
``FL_DEFAULT_ROUNDS``       rounds; ``0``, ``inf`` or ``unlimited``: run until stopped
``FL_DEFAULT_LOCAL_EPOCHS`` local epochs per round
``FL_DEFAULT_BATCH_SIZE``   local batch size
``FL_DEFAULT_LEARNING_RATE`` learning rate
``FL_DEFAULT_MIN_DEVICES``  minimum devices per round
``FL_DEFAULT_TRAIN_SAMPLES`` training samples used (``0``: all)
``FL_DEFAULT_TEST_SAMPLES`` server test samples (``0``: all)
``FL_DEFAULT_SEED``         random seed
``FL_AUTO_CREATE``          ``0`` to wait for "Create federation" instead of building one
                            with the defaults on first load (default ``1``)
``FL_REFRESH_SECONDS``      live refresh interval while a run is live (default 0.7)
``FL_RUNS_DIR``             where runs are recorded (SQLite index + checkpoints; default
                            ``runs``); read by ``app/runs.py``
=========================== ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from engine.config import FederationConfig


def _count_or_none(text: str) -> int | None:
    """A non-negative integer where 0 means "no limit"."""
    value = int(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value or None


def _rounds(text: str) -> int | None:
    return None if text.strip().lower() in ("inf", "unlimited", "none") else _count_or_none(text)


ENV_DEFAULTS: dict[str, tuple[str, Callable[[str], object]]] = {
    "FL_DEFAULT_DATASET": ("dataset", str),
    "FL_DEFAULT_MODEL": ("model", str),
    "FL_DEFAULT_DEVICES": ("num_devices", int),
    "FL_DEFAULT_PARTITION": ("partition", str),
    "FL_DEFAULT_ROUNDS": ("rounds", _rounds),
    "FL_DEFAULT_LOCAL_EPOCHS": ("local_epochs", int),
    "FL_DEFAULT_BATCH_SIZE": ("batch_size", int),
    "FL_DEFAULT_LEARNING_RATE": ("learning_rate", float),
    "FL_DEFAULT_MIN_DEVICES": ("min_devices", int),
    "FL_DEFAULT_TRAIN_SAMPLES": ("train_samples", _count_or_none),
    "FL_DEFAULT_TEST_SAMPLES": ("test_samples", _count_or_none),
    "FL_DEFAULT_SEED": ("seed", int),
}

DEFAULT_REFRESH_SECONDS = 0.7


def default_config(env: Mapping[str, str]) -> tuple[FederationConfig, list[str]]:
    """The engine's defaults with any ``FL_DEFAULT_*`` overrides, plus a warning per unusable variable."""
    changes: dict[str, object] = {}
    warnings = []
    for variable, (field_name, parse) in ENV_DEFAULTS.items():
        text = env.get(variable)
        if text is None or not text.strip():
            continue
        try:
            changes[field_name] = parse(text.strip())
        except ValueError as error:
            warnings.append(f"Ignored {variable}={text!r}: {error}")
    config = FederationConfig(**changes)
    if config.problems():
        warnings.append("The FL_DEFAULT_* values do not form a valid setup: " + "; ".join(config.problems()))
    return config, warnings


def refresh_seconds(env: Mapping[str, str]) -> float:
    """Live refresh interval, kept between 0.2 s and 5 s."""
    try:
        value = float(env.get("FL_REFRESH_SECONDS", DEFAULT_REFRESH_SECONDS))
    except ValueError:
        value = DEFAULT_REFRESH_SECONDS
    return min(5.0, max(0.2, value))


def auto_create(env: Mapping[str, str]) -> bool:
    return env.get("FL_AUTO_CREATE", "1").strip().lower() not in ("0", "false", "no", "off")
