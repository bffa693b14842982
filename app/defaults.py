"""Default setup values, optionally overridden by environment variables (demos, tests, screenshots).

Every setting of ``engine.config.FederationConfig`` that is a single value has a
variable ``FL_DEFAULT_<FIELD NAME IN CAPITALS>``: ``FL_DEFAULT_LEARNING_RATE``,
``FL_DEFAULT_PARTITION``, ``FL_DEFAULT_CLIP_NORM``, ... (``FL_DEFAULT_DEVICES`` is also
read for ``num_devices``). Values are written as for ``python -m engine run``
and read by the same code (``engine.settings.parse_setting``); for an optional
count ``0`` means "not set" (all samples; ``FL_DEFAULT_ROUNDS=0``: until stopped).
A value that does not parse or breaks its bounds is ignored with a warning.

Other variables:

=========================== ==========================================================
``FL_DATA_DIR``             folder with the IDX files (read by the engine; shown as the
                            default "data folder")
``FL_AUTO_CREATE``          ``0`` to wait for "Create federation" instead of building one
                            with the defaults on first load (default ``1``)
``FL_REFRESH_SECONDS``      live refresh interval while a run is live (default 0.7)
``FL_RUNS_DIR``             where runs are recorded (SQLite index + checkpoints; default
                            ``runs``); read by ``app/runs.py``
=========================== ==========================================================
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.config import FederationConfig
from engine.settings import declared_settings, kinds, parse_setting

ENV_PREFIX = "FL_DEFAULT_"
ENV_ALIASES = {"FL_DEFAULT_DEVICES": "num_devices"}  # older names, still read


def env_variables(cls: type = FederationConfig) -> dict[str, str]:
    """Variable -> field for every single-valued declared setting of ``cls`` (generated names, then aliases)."""
    cls_kinds = kinds(cls)
    names = {ENV_PREFIX + f.name.upper(): f.name for f, _ in declared_settings(cls) if not cls_kinds[f.name].collection}
    return names | {variable: name for variable, name in ENV_ALIASES.items() if name in names.values()}


DEFAULT_REFRESH_SECONDS = 0.7


def default_config(env: Mapping[str, str]) -> tuple[FederationConfig, list[str]]:
    """The engine's defaults with any ``FL_DEFAULT_*`` overrides, plus a warning per unusable variable."""
    changes: dict[str, object] = {}
    warnings = []
    for variable, field_name in env_variables().items():
        text = env.get(variable)
        if text is None or not text.strip():
            continue
        try:
            changes[field_name] = parse_setting(FederationConfig, field_name, text)
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
