"""The setup panel: sidebar widgets -> a FederationConfig, its problems, and the create/apply button."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import streamlit as st

from data.partition import PARTITION_SCHEMES
from devices.codec import COMPRESSIONS
from engine.config import BUILTIN_MODELS, OPTIMIZERS, FederationConfig
from engine.strategies import STRATEGIES
from app import state
from app.data_source import read_data_source
from app.defaults import default_config
from engine.model_defaults import describe_defaults
from app.setup_helpers import MALICIOUS_KINDS, PICK_MODES, faults_for, slowdowns_for, strategy_values

if TYPE_CHECKING:
    from engine.federation import Federation

OWN_MODEL = "own file"
MODEL_CHOICES = (*BUILTIN_MODELS, OWN_MODEL)
MODEL_LABELS = {"cnn": "CNN (small convolutional net)", "mlp": "MLP (2 hidden layers)",
                "linear": "Linear (linear / logistic regression)", "mobilenetv2": "MobileNetV2 (colour images)",
                OWN_MODEL: "Your own model file (.py)"}
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
BACKEND_LABELS = {
    "in-process": "In-process engine (simulated devices)",
    "flower": "Flower (SuperLink + SuperNode processes)",
}
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


def _read_widgets(defaults: FederationConfig) -> FederationConfig:
    """Render the setup widgets and turn their values into a configuration (not validated)."""
    bar = st.sidebar
    bar.subheader("Data")
    data_fields = read_data_source(bar, defaults)
    train_samples = bar.number_input(
        "Training samples to use (0 = all 60,000)", min_value=0, max_value=60_000, step=1000,
        value=defaults.train_samples or 0, key="setup_train_samples",
        help="Use a subset for quick demos: fewer samples train much faster.",
    )

    bar.subheader("Devices")
    num_devices = bar.number_input("Number of devices", min_value=1, max_value=1000, value=defaults.num_devices,
                                   key="setup_devices")
    partition = bar.selectbox("How data is split across devices", PARTITION_SCHEMES,
                              index=_index(PARTITION_SCHEMES, defaults.partition),
                              format_func=PARTITION_LABELS.get, key="setup_partition")
    alpha, shards, quantity_alpha = defaults.alpha, defaults.shards_per_device, defaults.quantity_alpha
    if partition == "dirichlet":
        alpha = bar.number_input("Dirichlet alpha (smaller = more skew)", min_value=0.0, value=defaults.alpha,
                                 step=0.1, format="%.2f", key="setup_alpha")
    elif partition == "shards":
        shards = bar.number_input("Shards per device", min_value=1, value=defaults.shards_per_device,
                                  key="setup_shards")
    elif partition == "quantity":
        quantity_alpha = bar.number_input("Quantity-skew alpha (smaller = more unequal)", min_value=0.0,
                                          value=defaults.quantity_alpha, step=0.1, format="%.2f",
                                          key="setup_quantity_alpha")

    bar.subheader("Training")
    model = bar.selectbox("Model", MODEL_CHOICES, index=_index(MODEL_CHOICES, defaults.model),
                          format_func=MODEL_LABELS.get, key="setup_model", help=describe_defaults())
    if model == OWN_MODEL:
        model = bar.text_input("Model file (.py with build(input_shape, num_classes))", key="setup_model_file",
                               help="Runs that file's code: only a file on this machine that you trust.").strip()
    until_stopped = bar.checkbox("Run until stopped", value=defaults.rounds is None, key="setup_until_stopped")
    rounds = bar.number_input("Rounds", min_value=1, max_value=10_000, value=defaults.rounds or 5,
                              disabled=until_stopped, key="setup_rounds",
                              help="Can be changed during a run; raise it to continue a finished run.")
    local_epochs = bar.number_input("Local epochs per round", min_value=1, max_value=100,
                                    value=defaults.local_epochs, key="setup_local_epochs")
    batch_size = bar.number_input("Batch size", min_value=1, max_value=4096, value=defaults.batch_size,
                                  key="setup_batch_size")
    learning_rate = bar.number_input("Learning rate", min_value=0.0, max_value=10.0, value=defaults.learning_rate,
                                     step=0.0005, format="%.4f", key="setup_learning_rate")
    optimizer = bar.selectbox("Optimizer", OPTIMIZERS, index=_index(OPTIMIZERS, defaults.optimizer),
                              format_func=OPTIMIZER_LABELS.get, key="setup_optimizer")
    momentum = defaults.momentum
    if optimizer == "sgd":
        momentum = bar.number_input("Momentum", min_value=0.0, max_value=1.0, value=defaults.momentum,
                                    step=0.05, key="setup_momentum")

    bar.subheader("Each round")
    min_devices = bar.number_input("Minimum devices per round", min_value=1, value=defaults.min_devices,
                                   key="setup_min_devices",
                                   help="Training waits while fewer devices are active.")
    fraction = bar.slider("Share of active devices sampled", min_value=0.05, max_value=1.0,
                          value=float(defaults.fraction), step=0.05, key="setup_fraction")
    seed = bar.number_input("Random seed", min_value=0, value=defaults.seed, key="setup_seed")

    with bar.expander("Advanced"):
        data_dir = st.text_input("Data folder (IDX files)", value=os.environ.get("FL_DATA_DIR", ""),
                                 key="setup_data_dir",
                                 help="Empty: $FL_DATA_DIR, else Keras downloads the data set.")
        test_samples = st.number_input("Server test images (0 = all 10,000)", min_value=0, max_value=10_000,
                                       value=defaults.test_samples or 0, step=500, key="setup_test_samples")
        workers = st.number_input("Devices training in parallel", min_value=1, max_value=64,
                                  value=defaults.workers, key="setup_workers")
        stack_width = st.number_input("Devices trained together (vectorised)", min_value=1, max_value=64,
                                      value=defaults.stack_width, key="setup_stack_width",
                                      help="Devices of a round train side by side as one stacked computation, "
                                           "with the same result as one by one. 1 trains them one by one.")
        xla = st.checkbox("Compile stacks with XLA", value=defaults.xla, key="setup_xla",
                          help="For dense-only models (the MLP): faster rounds after a few seconds of compiling.")
        st.selectbox("Where devices run", ("in-process", "flower"), key=state.BACKEND_KEY,
                     format_func=BACKEND_LABELS.get,
                     help="Flower starts a real SuperLink and one SuperNode process per device on this machine "
                          "(slower rounds; up to 8 devices; no DP, secure aggregation, compression or "
                          "simulated dropouts). The in-process engine is the default.")
        device_ids = list(range(int(num_devices)))
        for key in ("setup_crash", "setup_nan"):  # drop devices that no longer exist
            if key in st.session_state:
                st.session_state[key] = [d for d in st.session_state[key] if d in device_ids]
        nan_devices = st.multiselect("Simulate devices sending NaN updates", device_ids, key="setup_nan")
        crash_devices = st.multiselect("Simulate devices that crash", device_ids, key="setup_crash")

    extra = _read_strategy_privacy(defaults, int(num_devices), int(seed))
    faults = extra.pop("faults") | {int(d): "nan" for d in nan_devices} | {int(d): "crash" for d in crash_devices}
    return FederationConfig(
        **data_fields, data_dir=data_dir.strip() or None, model=model, num_devices=int(num_devices),
        partition=partition, alpha=float(alpha), shards_per_device=int(shards), quantity_alpha=float(quantity_alpha),
        rounds=None if until_stopped else int(rounds), local_epochs=int(local_epochs), batch_size=int(batch_size),
        learning_rate=float(learning_rate), optimizer=optimizer, momentum=float(momentum),
        min_devices=int(min_devices), fraction=float(fraction), seed=int(seed),
        train_samples=int(train_samples) or None, test_samples=int(test_samples) or None,
        workers=int(workers), stack_width=int(stack_width), xla=bool(xla), faults=faults, **extra,
    )


def _strategy_widgets(defaults: FederationConfig) -> tuple[str, dict[str, float]]:
    """Strategy choice and its hyper-parameters, generated from the strategy class."""
    names = list(STRATEGIES)
    strategy = st.selectbox("Aggregation strategy", names, index=_index(names, defaults.strategy),
                            format_func=lambda n: STRATEGIES[n].title,
                            key="setup_strategy")
    cls = STRATEGIES[strategy]
    st.caption(f"**{cls.title}**: {cls.summary}" + ("" if cls.linear else " Needs each update (not a mean)."))
    parameters, helps = cls.parameters(), cls.parameter_help()
    start = defaults.strategy_params if strategy == defaults.strategy else {}
    chosen = {name: st.number_input(name.replace("_", " ").capitalize(), value=float(start.get(name, default)),
                                    format="%.4g", help=helps.get(name), key=f"setup_{strategy}_{name}")
              for name, default in parameters.items()}
    return strategy, strategy_values(parameters, chosen)


def _device_behaviour_widgets(defaults: FederationConfig, num_devices: int, seed: int) -> dict:
    """Dropout, round deadline, slow devices and malicious devices."""
    dropout = st.slider("Dropout probability (a selected device does not answer)", 0.0, 0.95,
                        value=float(defaults.dropout), step=0.05, key="setup_dropout")
    use_deadline = st.checkbox("Round deadline (drop stragglers)", value=defaults.round_deadline is not None,
                               key="setup_use_deadline")
    deadline = st.number_input("Deadline (simulated seconds)", min_value=0.0, value=defaults.round_deadline or 5.0,
                               step=0.5, disabled=not use_deadline, key="setup_deadline",
                               help="Updates whose simulated training time (seconds × slowdown) exceeds this "
                                    "are dropped as stragglers.")
    slow_count = st.number_input("Slow devices", min_value=0, max_value=num_devices, value=0, key="setup_slow_count")
    slow_factor = st.number_input("Slowdown factor", min_value=0.1, value=4.0, step=0.5, key="setup_slow_factor",
                                  help="Their training takes this many times longer (simulated).")
    slow_mode = st.radio("Which devices are slow", PICK_MODES, horizontal=True, key="setup_slow_mode",
                         format_func={"first": "the first ones", "random": "random (seeded)"}.get)
    bad_count = st.number_input("Malicious devices (the last ones)", min_value=0, max_value=num_devices, value=0,
                                key="setup_bad_count")
    bad_kind = st.selectbox("What they send", MALICIOUS_KINDS, format_func=MALICIOUS_LABELS.get, key="setup_bad_kind")
    return {
        "dropout": float(dropout),
        "round_deadline": float(deadline) if use_deadline else None,
        "slowdowns": slowdowns_for(num_devices, int(slow_count), float(slow_factor), slow_mode, seed),
        "faults": faults_for(num_devices, int(bad_count), bad_kind),
    }


def _privacy_widgets(defaults: FederationConfig) -> dict:
    """Differential privacy, secure aggregation and compression."""
    use_dp = st.checkbox("Differential privacy (clip + noise)", value=defaults.clip_norm is not None,
                         key="setup_dp")
    clip = st.number_input("Clipping norm", value=defaults.clip_norm or 1.0, step=0.1, disabled=not use_dp,
                           key="setup_clip", help="Each device's update is scaled down to at most this L2 norm.")
    noise = st.number_input("Central noise multiplier", min_value=0.0, value=defaults.noise_multiplier or 0.0,
                            step=0.1, disabled=not use_dp, key="setup_noise",
                            help="Server adds Gaussian noise (multiplier × clip / devices) to the mean update.")
    local_noise = st.number_input("Local noise multiplier", min_value=0.0, value=defaults.local_noise_multiplier,
                                  step=0.1, disabled=not use_dp, key="setup_local_noise",
                                  help="Each device adds Gaussian noise (multiplier × clip) before sending.")
    delta = st.number_input("DP delta", value=defaults.dp_delta, format="%.1e", step=1e-6, disabled=not use_dp,
                            key="setup_delta")
    secure = st.checkbox("Secure aggregation", value=defaults.secure_aggregation, key="setup_secure")
    st.caption(SECURE_AGGREGATION_NOTE)
    compression = st.selectbox("Update compression", COMPRESSIONS, index=_index(COMPRESSIONS, defaults.compression),
                               format_func=lambda c: COMPRESSION_LABELS.get(c, c), key="setup_compression")
    topk = defaults.topk_fraction
    if compression == "topk":
        topk = st.number_input("Top-k fraction kept", min_value=0.0, max_value=1.0, value=defaults.topk_fraction,
                               step=0.01, format="%.3f", key="setup_topk")
    return {
        "clip_norm": float(clip) if use_dp else None,
        "noise_multiplier": float(noise) if use_dp else 0.0,
        "local_noise_multiplier": float(local_noise) if use_dp else 0.0,
        "dp_delta": float(delta),
        "secure_aggregation": bool(secure),
        "compression": compression,
        "topk_fraction": float(topk),
    }


def _read_strategy_privacy(defaults: FederationConfig, num_devices: int, seed: int) -> dict:
    """The "Strategy & privacy" section: FederationConfig fields (``faults`` to be merged by the caller)."""
    bar = st.sidebar
    bar.subheader("Strategy & privacy")
    with bar.expander("Aggregation strategy", expanded=False):
        strategy, params = _strategy_widgets(defaults)
    with bar.expander("Unreliable and malicious devices", expanded=False):
        behaviour = _device_behaviour_widgets(defaults, num_devices, seed)
    with bar.expander("Privacy and compression", expanded=False):
        privacy = _privacy_widgets(defaults)
    return {"strategy": strategy, "strategy_params": params, **behaviour, **privacy}


def _apply_button(setup: Setup, federation: Federation | None) -> None:
    """The create/apply button, enabled only when applying is allowed, and a line saying why not."""
    bar = st.sidebar
    if federation is None:
        label, allowed, note = "Create federation", setup.valid, None
    elif same_setup(setup.config, state.requested_config(federation)) \
            and state.backend_of(federation) == state.selected_backend():
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
    setup = Setup(config, tuple(config.problems()))
    for problem in setup.problems:
        st.sidebar.error(problem[:1].upper() + problem[1:])
    _apply_button(setup, federation)
    return setup
