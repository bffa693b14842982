"""The setup panel: sidebar widgets -> a FederationConfig, its problems, and the create/apply button."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import streamlit as st

from engine.config import BUILTIN_MODELS, FederationConfig
from engine.settings import declared_settings, kinds
from engine.strategies import STRATEGIES
from app import state
from app.defaults import default_config
from app.setup_helpers import (
    MALICIOUS_KINDS,
    PICK_MODES,
    faults_for,
    plain_widget_value,
    slowdowns_for,
    strategy_values,
    widget_key,
)

if TYPE_CHECKING:
    from engine.federation import Federation

DATASET_LABELS = {"fashion-mnist": "Fashion-MNIST (clothing)", "mnist": "MNIST (digits)"}
MODEL_LABELS = {"cnn": "CNN (small convolutional net)", "mlp": "MLP (2 hidden layers)"}
PARTITION_LABELS = {
    "iid": "IID (every device sees all classes)",
    "dirichlet": "Dirichlet label skew",
    "shards": "Shards (few classes per device)",
    "quantity": "Quantity skew (unequal sizes)",
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
BACKEND_LABELS = {
    "in-process": "In-process engine (simulated devices)",
    "flower": "Flower (SuperLink + SuperNode processes)",
}
SETTINGS = {f.name: spec for f, spec in declared_settings(FederationConfig)}
KINDS = kinds(FederationConfig)
SECURE_AGGREGATION_NOTE = (
    "Simulated secure aggregation: each pair of devices adds cancelling masks, so the server only learns the sum. "
    "Simulated: the pairwise seeds come from one shared secret (no key exchange), and dropped devices' masks "
    "are recovered from the survivors without real secret sharing."
)


@dataclass(frozen=True)
class Setup:
    """What the setup panel currently says."""

    config: FederationConfig
    problems: tuple[str, ...]

    @property
    def valid(self) -> bool:
        return not self.problems


def same_setup(a: FederationConfig, b: FederationConfig) -> bool:
    """Equal apart from the number of rounds, which a live federation can change without a reset."""
    return a.with_changes(rounds=None) == b.with_changes(rounds=None)


def has_run(federation: Federation) -> bool:
    """True once training started: the setup can then only change through a reset."""
    snapshot = federation.snapshot()
    return snapshot.round > 0 or snapshot.is_live


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


def _data_dir_widget(box, name: str, defaults: FederationConfig, values: dict):
    return setting_widget(box, name, defaults.data_dir or os.environ.get("FL_DATA_DIR", ""),
                          help="Empty: $FL_DATA_DIR, else Keras downloads the data set.")


def _strategy_widget(box, name: str, defaults: FederationConfig, values: dict):
    strategy = box.selectbox("Aggregation strategy", list(STRATEGIES), index=_index(list(STRATEGIES), defaults.strategy),
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
    bad_count = box.number_input("Malicious devices (the last ones)", min_value=0, max_value=num_devices, value=0,
                                 key="setup_bad_count")
    bad_kind = box.selectbox("What they send", MALICIOUS_KINDS, format_func=MALICIOUS_LABELS.get,
                             key="setup_bad_kind")
    device_ids = list(range(num_devices))
    for key in ("setup_crash", "setup_nan"):  # drop devices that no longer exist
        if key in st.session_state:
            st.session_state[key] = [d for d in st.session_state[key] if d in device_ids]
    nan_devices = box.multiselect("Simulate devices sending NaN updates", device_ids, key="setup_nan")
    crash_devices = box.multiselect("Simulate devices that crash", device_ids, key="setup_crash")
    return (faults_for(num_devices, int(bad_count), bad_kind) | {int(d): "nan" for d in nan_devices}
            | {int(d): "crash" for d in crash_devices})


def _slowdowns_widget(box, name: str, defaults: FederationConfig, values: dict):
    num_devices = values["num_devices"]
    slow_count = box.number_input("Slow devices", min_value=0, max_value=num_devices, value=0, key="setup_slow_count")
    slow_factor = box.number_input("Slowdown factor", min_value=0.1, value=4.0, step=0.5, key="setup_slow_factor",
                                   help="Their training takes this many times longer (simulated).")
    slow_mode = box.radio("Which devices are slow", PICK_MODES, horizontal=True, key="setup_slow_mode",
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

# Where each group's fields go: a sidebar heading, or an expander (the default for a new group).
SECTIONS = (
    ("data", "Data", "heading"),
    ("devices", "Devices", "heading"),
    ("training", "Training", "heading"),
    ("round", "Each round", "heading"),
    ("advanced", "Advanced", "expander"),
    ("strategy", "Aggregation strategy", "strategy expander"),
    ("behaviour", "Unreliable and malicious devices", "strategy expander"),
    ("privacy", "Privacy and compression", "strategy expander"),
)
SECTION_OF = {"data_dir": "advanced", "test_samples": "advanced", "local_test_fraction": "advanced",
              "speed": "advanced", "strategy": "strategy", "strategy_params": "strategy"}


def _section(name: str, group: str) -> str:
    placed = SECTION_OF.get(name) or SECTION_OF.get(group) or group
    return placed if placed in {section for section, _, _ in SECTIONS} else "advanced"


def _read_widgets(defaults: FederationConfig) -> FederationConfig:
    """Render the setup widgets and turn their values into a configuration (not validated).

    Every declared setting gets a widget in its group's section, in declaration
    order: a plain one generated by :func:`setting_widget`, or its entry in
    :data:`SPECIAL_WIDGETS`. A new field needs no code here.
    """
    bar = st.sidebar
    values: dict = {}
    fields_by_section: dict[str, list[str]] = {}
    for f, spec in declared_settings(FederationConfig):
        fields_by_section.setdefault(_section(f.name, spec.group), []).append(f.name)
    for section, title, style in SECTIONS:
        if style == "strategy expander" and section == "strategy":
            bar.subheader("Strategy & privacy")
        if style == "heading":
            bar.subheader(title)
            box = bar
        else:
            box = bar.expander(title, expanded=False)
        with box:
            for name in fields_by_section.get(section, []):
                special = SPECIAL_WIDGETS.get(name)
                values[name] = special(st, name, defaults, values) if special else \
                    setting_widget(st, name, getattr(defaults, name))
            if section == "advanced":
                st.selectbox("Where devices run", ("in-process", "flower"), key=state.BACKEND_KEY,
                             format_func=BACKEND_LABELS.get,
                             help="Flower starts a real SuperLink and one SuperNode process per device on this "
                                  "machine (slower rounds; up to 8 devices; no DP, secure aggregation, compression "
                                  "or simulated dropouts). The in-process engine is the default.")
    values.pop("_use_dp", None)
    return FederationConfig(**values)


def _apply_button(setup: Setup, federation: Federation | None) -> None:
    """The create/apply button, enabled only when applying is allowed, and a line saying why not."""
    bar = st.sidebar
    if federation is None:
        label, allowed, note = "Create federation", setup.valid, None
    elif same_setup(setup.config, federation.config) and state.backend_of(federation) == state.selected_backend():
        label, allowed, note = "Apply setup", False, "The federation matches this setup."
    elif has_run(federation):
        label, allowed, note = "Apply setup", False, None
        bar.warning("The setup changed while a run exists. Press **Reset** (Training controls) to discard "
                    "the run and rebuild the federation with this setup.")
    else:
        label, allowed, note = "Apply setup", setup.valid, "Setup changed: apply it to rebuild the devices."
    if not setup.valid:
        note = "Fix the problems above first."
    bar.button(label, key="apply", type="primary", disabled=not allowed, width="stretch",
               on_click=state.request_create, args=(setup.config,))
    if note:
        bar.caption(note)


def render(federation: Federation | None) -> Setup:
    """Draw the setup panel; return the configuration it describes and its problems."""
    defaults, warnings = default_config(os.environ)
    st.sidebar.header("Setup")
    for warning in warnings:
        st.sidebar.warning(warning)
    config = _read_widgets(defaults)
    setup = Setup(config, tuple(config.problems() + state.transport_problems(config)))
    for problem in setup.problems:
        st.sidebar.error(problem[:1].upper() + problem[1:])
    _apply_button(setup, federation)
    return setup
