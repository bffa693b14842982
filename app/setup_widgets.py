"""The setup panel's widgets, generated from the declared settings, and the few fields that need more.

:func:`setting_widget` draws any declared field from its ``Setting`` (label, help,
bounds -> min/max, choices) and its type; :data:`WIDGET_OPTIONS` tweaks a plain
widget (labels of choices, practical maxima, sliders) and :data:`SPECIAL_WIDGETS`
draws the fields that are more than one plain widget (partition-dependent
parameters, "until stopped", fault and slowdown pickers, the DP block).
"""

from __future__ import annotations

import os

import streamlit as st

from engine.config import BUILTIN_MODELS, FederationConfig
from engine.settings import declared_settings, kinds
from engine.strategies import STRATEGIES
from app.data_upload import dataset_widget
from app.setup_helpers import (
    MALICIOUS_KINDS,
    PICK_MODES,
    fault_widget_values,
    faults_for,
    plain_widget_value,
    slowdown_widget_values,
    slowdowns_for,
    strategy_values,
    widget_key,
)

DATASET_LABELS = {"fashion-mnist": "Fashion-MNIST (clothing)", "mnist": "MNIST (digits)"}
MODEL_LABELS = {"cnn": "CNN (small convolutional net)", "mlp": "MLP (2 hidden layers)",
                "linear": "Linear (linear / logistic regression)", "mobilenetv2": "MobileNetV2 (colour images)"}
PARTITION_LABELS = {
    "iid": "IID (every device sees all classes)",
    "dirichlet": "Dirichlet label skew",
    "shards": "Shards (few classes per device)",
    "quantity": "Quantity skew (unequal sizes)",
    "natural": "Natural (the data's own devices)",
}
OPTIMIZER_LABELS = {"adam": "Adam", "sgd": "SGD with momentum"}
COMPRESSION_LABELS = {
    "none": "None (float32)",
    "q8": "8-bit quantisation (~4× smaller)",
    "q4": "4-bit quantisation (~8× smaller)",
    "topk": "Top-k sparsification (largest changes only)",
}
MALICIOUS_LABELS = {
    "scale": "Scale attack (flipped, boosted update)",
    "random": "Random weights",
    "crash": "Crash during training",
    "nan": "NaN update",
}
SETTINGS = {f.name: spec for f, spec in declared_settings(FederationConfig)}
KINDS = kinds(FederationConfig)
SECURE_AGGREGATION_NOTE = (
    "Simulated secure aggregation: each pair of devices adds cancelling masks, so the server only learns the sum. "
    "Simulated: the pairwise seeds come from one shared secret (no key exchange), and dropped devices' masks "
    "are recovered from the survivors without real secret sharing."
)


def _index(options, value) -> int:
    return list(options).index(value) if value in options else 0


# -- plain widgets, generated from the declared settings ----------------------------------------------
# Per-field tweaks of the generated widget (labels of choices, practical maxima, sliders, steps).
WIDGET_OPTIONS: dict[str, dict] = {
    "dataset": {"labels": DATASET_LABELS},
    "train_samples": {"label": "Training samples to use (0 = all 60,000)", "max_value": 60_000, "step": 1000,
                      "help": "Use a subset for quick demos: fewer samples train much faster."},
    "test_samples": {"label": "Server test images (0 = all 10,000)", "max_value": 10_000, "step": 500},
    "num_devices": {"max_value": 1000},
    "partition": {"labels": PARTITION_LABELS},
    "alpha": {"step": 0.1, "format": "%.2f"},
    "quantity_alpha": {"step": 0.1, "format": "%.2f"},
    "model": {"choices": BUILTIN_MODELS, "labels": MODEL_LABELS},
    "rounds": {"max_value": 10_000, "help": "Can be changed during a run; raise it to continue a finished run."},
    "local_epochs": {"max_value": 100},
    "batch_size": {"max_value": 4096},
    "learning_rate": {"max_value": 10.0, "step": 0.0005, "format": "%.4f"},
    "optimizer": {"labels": OPTIMIZER_LABELS},
    "momentum": {"step": 0.05, "max_value": 1.0},
    "min_devices": {"help": "Training waits while fewer devices are active."},
    "fraction": {"slider": True, "min_value": 0.05, "step": 0.05},
    "workers": {"max_value": 64},
    "stack_width": {"max_value": 64, "help": "Devices of a round train side by side as one stacked computation, "
                                             "with the same result as one by one. 1 trains them one by one."},
    "xla": {"help": "For dense-only models (the MLP): faster rounds after a few seconds of compiling."},
    "dropout": {"slider": True, "max_value": 0.95, "step": 0.05,
                "label": "Dropout probability (a selected device does not answer)"},
    "round_deadline": {"label": "Deadline (simulated seconds)", "step": 0.5,
                       "help": "Updates whose simulated training time (seconds × slowdown) exceeds this are "
                               "dropped as stragglers."},
    "clip_norm": {"step": 0.1, "help": "Each device's update is scaled down to at most this L2 norm."},
    "noise_multiplier": {"step": 0.1, "help": "Server adds Gaussian noise (multiplier × clip / devices) to the "
                                              "mean update."},
    "local_noise_multiplier": {"step": 0.1, "help": "Each device adds Gaussian noise (multiplier × clip) before "
                                                    "sending."},
    "dp_delta": {"format": "%.1e", "step": 1e-6},
    "compression": {"labels": COMPRESSION_LABELS},
    "topk_fraction": {"step": 0.01, "format": "%.3f"},
}


def _declarations(cls: type) -> tuple[dict, dict]:
    """Each declared field's Setting and Kind (FederationConfig's read once, at import)."""
    if cls is FederationConfig:
        return SETTINGS, KINDS
    return {f.name: spec for f, spec in declared_settings(cls)}, kinds(cls)


def setting_widget(box, name: str, value, cls: type = FederationConfig, **overrides):
    """The widget of setting ``name`` showing ``value``, from its declaration (label, help, bounds, choices).

    A number gets a number input (or a slider) bounded by its ``Bounds``, a choice a
    select box, a flag a checkbox, text a text input; an optional count shows 0
    for "not set". Returns the widget's value as the field's type.
    """
    specs, cls_kinds = _declarations(cls)
    spec, kind = specs[name], cls_kinds[name]
    options = {**(WIDGET_OPTIONS.get(name, {}) if cls is FederationConfig else {}), **overrides}
    key = widget_key(name)
    label = options.pop("label", spec.label or name.replace("_", " ").capitalize())
    common = {"key": key, "help": options.pop("help", spec.help), "disabled": options.pop("disabled", False)}
    labels = options.pop("labels", None)
    choices = options.pop("choices", None) or spec.allowed_choices()
    shown = plain_widget_value(kind, value)
    if kind.base is bool:
        return bool(box.checkbox(label, value=bool(shown), **common))
    if choices:
        choices = list(choices)
        fmt = (lambda c: labels.get(c, str(c))) if labels else str
        return box.selectbox(label, choices, index=_index(choices, shown),
                             format_func=fmt, **common)
    if kind.base is str:
        text = box.text_input(label, value=str(shown), **common)
        return (text.strip() or None) if kind.optional else text
    if kind.collection:  # written as on the command line; text that does not parse is shown as a problem
        text = box.text_input(label, value=str(shown), **common)
        try:
            return kind.parse(text)
        except ValueError:
            return text
    number = kind.base
    bounds = spec.bounds
    limits = {}
    if bounds is not None and bounds.low is not None:
        limits["min_value"] = number(bounds.low) + (1 if number is int and not bounds.low_inclusive else 0)
    if kind.zero_is_none:
        limits["min_value"] = number(0)
    if bounds is not None and bounds.high is not None:
        limits["max_value"] = number(bounds.high)
    limits.update({k: number(v) if k in ("min_value", "max_value") else v for k, v in options.items()
                   if k in ("min_value", "max_value", "step", "format")})
    if options.get("slider"):
        chosen = box.slider(label, **limits, value=number(shown), **common)
    else:
        chosen = box.number_input(label, **limits, value=number(shown), **common)
    chosen = number(chosen)
    return None if kind.zero_is_none and chosen == 0 else chosen


# -- fields whose widgets are more than one plain widget ------------------------------------------------
def _partition_parameter(scheme: str):
    """Alpha / shards / quantity alpha: shown only for the partition scheme that uses it."""
    def widget(box, name: str, defaults: FederationConfig, values: dict):
        if values["partition"] != scheme:
            return getattr(defaults, name)
        return setting_widget(box, name, getattr(defaults, name))
    return widget


def _rounds_widget(box, name: str, defaults: FederationConfig, values: dict):
    until_stopped = box.checkbox("Run until stopped", value=defaults.rounds is None, key="setup_until_stopped")
    rounds = setting_widget(box, "rounds", defaults.rounds or 5, min_value=1, disabled=until_stopped)
    return None if until_stopped else int(rounds or 5)


def _momentum_widget(box, name: str, defaults: FederationConfig, values: dict):
    return setting_widget(box, name, defaults.momentum) if values["optimizer"] == "sgd" else defaults.momentum


def _dataset_widget(box, name: str, defaults: FederationConfig, values: dict):
    return dataset_widget(box, setting_widget(box, name, defaults.dataset))


def _data_dir_widget(box, name: str, defaults: FederationConfig, values: dict):
    return setting_widget(box, name, defaults.data_dir or os.environ.get("FL_DATA_DIR", ""),
                          help="Empty: $FL_DATA_DIR, else Keras downloads the data set.")


def _strategy_widget(box, name: str, defaults: FederationConfig, values: dict):
    names = list(STRATEGIES)
    strategy = box.selectbox("Aggregation strategy", names, index=_index(names, defaults.strategy),
                             format_func=lambda n: STRATEGIES[n].title, key="setup_strategy")
    cls = STRATEGIES[strategy]
    box.caption(f"**{cls.title}**: {cls.summary}" + ("" if cls.linear else " Needs each update (not a mean)."))
    return strategy


def _strategy_params_widget(box, name: str, defaults: FederationConfig, values: dict):
    """The chosen strategy's hyper-parameters, generated from the strategy class."""
    strategy = values["strategy"]
    parameters, helps = STRATEGIES[strategy].parameters(), STRATEGIES[strategy].parameter_help()
    start = defaults.strategy_params if strategy == defaults.strategy else {}
    chosen = {param: box.number_input(param.replace("_", " ").capitalize(), value=float(start.get(param, default)),
                                      format="%.4g", help=helps.get(param), key=f"setup_{strategy}_{param}")
              for param, default in parameters.items()}
    return strategy_values(parameters, chosen)


def _faults_widget(box, name: str, defaults: FederationConfig, values: dict):
    """Malicious devices (the last ones) plus devices picked to send NaN updates or crash."""
    num_devices = values["num_devices"]
    seeded = fault_widget_values(defaults)
    device_ids = list(range(num_devices))
    bad_count = box.number_input("Malicious devices (the last ones)", min_value=0, max_value=num_devices,
                                 value=min(seeded["setup_bad_count"], num_devices), key="setup_bad_count")
    bad_kind = box.selectbox("What they send", MALICIOUS_KINDS, format_func=MALICIOUS_LABELS.get,
                             index=_index(MALICIOUS_KINDS, seeded.get("setup_bad_kind")), key="setup_bad_kind")
    for key in ("setup_crash", "setup_nan"):  # drop devices that no longer exist (writing only if some went)
        if key in st.session_state and any(d not in device_ids for d in st.session_state[key]):
            st.session_state[key] = [d for d in st.session_state[key] if d in device_ids]
    nan_devices = box.multiselect("Simulate devices sending NaN updates", device_ids, key="setup_nan",
                                  default=[d for d in seeded["setup_nan"] if d in device_ids] or None)
    crash_devices = box.multiselect("Simulate devices that crash", device_ids, key="setup_crash",
                                    default=[d for d in seeded["setup_crash"] if d in device_ids] or None)
    return (faults_for(num_devices, int(bad_count), bad_kind) | {int(d): "nan" for d in nan_devices}
            | {int(d): "crash" for d in crash_devices})


def _slowdowns_widget(box, name: str, defaults: FederationConfig, values: dict):
    num_devices = values["num_devices"]
    seeded = slowdown_widget_values(defaults)
    slow_count = box.number_input("Slow devices", min_value=0, max_value=num_devices,
                                  value=min(seeded["setup_slow_count"], num_devices), key="setup_slow_count")
    slow_factor = box.number_input("Slowdown factor", min_value=0.1, value=seeded.get("setup_slow_factor", 4.0),
                                   step=0.5, key="setup_slow_factor",
                                   help="Their training takes this many times longer (simulated).")
    slow_mode = box.radio("Which devices are slow", PICK_MODES, horizontal=True, key="setup_slow_mode",
                          index=_index(PICK_MODES, seeded.get("setup_slow_mode")),
                          format_func={"first": "the first ones", "random": "random (seeded)"}.get)
    return slowdowns_for(num_devices, int(slow_count), float(slow_factor), slow_mode, values["seed"])


def _deadline_widget(box, name: str, defaults: FederationConfig, values: dict):
    use = box.checkbox("Round deadline (drop stragglers)", value=defaults.round_deadline is not None,
                       key="setup_use_deadline")
    deadline = setting_widget(box, name, defaults.round_deadline or 5.0, min_value=0.1, disabled=not use)
    return deadline if use else None


def _dp_widget(box, name: str, defaults: FederationConfig, values: dict):
    """The DP block: a checkbox, then clipping norm and noise multipliers, off (unset) when unchecked."""
    if name == "clip_norm":
        values["_use_dp"] = box.checkbox("Differential privacy (clip + noise)", value=defaults.clip_norm is not None,
                                         key="setup_dp")
    use_dp = values["_use_dp"]
    default = getattr(defaults, name) if name != "clip_norm" else (defaults.clip_norm or 1.0)
    chosen = setting_widget(box, name, default, disabled=not use_dp,
                            **({"min_value": 0.01} if name == "clip_norm" else {}))
    if not use_dp:
        return None if name == "clip_norm" else 0.0
    return chosen


def _delta_widget(box, name: str, defaults: FederationConfig, values: dict):
    return setting_widget(box, name, defaults.dp_delta, disabled=not values["_use_dp"])


def _secure_widget(box, name: str, defaults: FederationConfig, values: dict):
    secure = setting_widget(box, name, defaults.secure_aggregation)
    box.caption(SECURE_AGGREGATION_NOTE)
    return secure


def _topk_widget(box, name: str, defaults: FederationConfig, values: dict):
    return setting_widget(box, name, defaults.topk_fraction) if values["compression"] == "topk" \
        else defaults.topk_fraction


SPECIAL_WIDGETS = {
    "dataset": _dataset_widget,
    "data_dir": _data_dir_widget,
    "alpha": _partition_parameter("dirichlet"),
    "shards_per_device": _partition_parameter("shards"),
    "quantity_alpha": _partition_parameter("quantity"),
    "strategy": _strategy_widget,
    "strategy_params": _strategy_params_widget,
    "rounds": _rounds_widget,
    "momentum": _momentum_widget,
    "faults": _faults_widget,
    "slowdowns": _slowdowns_widget,
    "round_deadline": _deadline_widget,
    "clip_norm": _dp_widget,
    "noise_multiplier": _dp_widget,
    "local_noise_multiplier": _dp_widget,
    "dp_delta": _delta_widget,
    "secure_aggregation": _secure_widget,
    "topk_fraction": _topk_widget,
}
