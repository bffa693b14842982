"""Typed configuration of a federation, with validation that explains every problem."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace

from data.datasets import TRAIN_SET_SIZES
from data.partition import PARTITION_SCHEMES, PartitionSpec
from data.sources import source_problem
from data.spec import COLOR_MODES, TASK_CHOICES, SourceOptions
from devices.codec import COMPRESSIONS
from devices.faults import FAULTS
from engine.personalization import PERSONALIZATIONS, personalization_problems
from engine.precision import PRECISIONS
from engine.settings import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, SEED, Bounds, field_problems, setting
from engine.strategies import STRATEGIES, strategy_device_problems, strategy_problems

BUILTIN_MODELS = ("cnn", "mlp", "linear", "mobilenetv2")
OPTIMIZERS = ("sgd", "adam")
OPTIMIZER_STATES = ("auto", "kept", "fresh")
KEPT_STATE_MAX_DEVICES = 100
"""``optimizer_state = auto`` keeps each device's optimizer state up to this many devices (memory: two model-sized
arrays per device)."""


class ConfigError(ValueError):
    """One or more settings are impossible; ``problems`` lists each in plain words."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class FederationConfig:
    """Everything that defines a federated run. Defaults reach ~0.89 on Fashion-MNIST in 5 rounds."""

    # -- data -------------------------------------------------------------------------
    dataset: str = setting("fashion-mnist", group="data", label="Data set",
                           help="a built-in data set (fashion-mnist, mnist) or a path: an image folder "
                                "(ROOT/<class>/*, ROOT/train|test/<class>/*, ROOT/devices/<device>/<class>/*), "
                                "a .csv (with --target) or an .npz (x_train, y_train[, x_test, y_test])")
    image_size: int | None = setting(None, group="data", label="Image side (pixels)",
                                     bounds=Bounds(8.0, 512.0, high_inclusive=True), help="side images of a folder are resized to (default: the median side, "
                                          "at most 64)")
    color: str = setting("auto", group="data", label="Colour mode", choices=COLOR_MODES,
                         help="images in colour (rgb), grey, or auto (colour when the images are)")
    target: str | None = setting(None, group="data", label="Target column (CSV)",
                                 help="the CSV column to predict")
    task: str = setting("auto", group="data", label="Task", choices=TASK_CHOICES,
                        help="classification or regression (auto: classification for text or few-valued "
                             "integer targets, regression for real values)")
    device_column: str | None = setting(None, group="data", label="Device column (CSV)",
                                        help="CSV column naming each row's device: a natural partition "
                                             "(--partition natural)")
    data_dir: str | None = setting(None, group="data", label="Data folder (IDX files)",
                                   help="folder with the IDX .gz files (default: $FL_DATA_DIR, else download with Keras)")
    train_samples: int | None = setting(None, group="data", label="Training samples to use (0 = all)",
                                        bounds=AT_LEAST_ONE,
                                        help="use a random subset of this many training samples (quick runs; 0: all)")
    test_samples: int | None = setting(None, group="data", label="Server test samples (0 = all)",
                                       bounds=AT_LEAST_ONE,
                                       help="evaluate the global model on the first N test samples (0: all)")
    local_test_fraction: float = setting(0.1, group="data", label="Local test share", bounds=FRACTION,
                                         help="share of each device's data kept as its local test split")
    # -- devices and how the data is split ----------------------------------------------
    num_devices: int = setting(10, group="devices", label="Number of devices", bounds=AT_LEAST_ONE, flag="--devices",
                               help="number of devices")
    partition: str = setting("iid", group="devices", label="How data is split across devices",
                             choices=PARTITION_SCHEMES,
                             help="how the training set is split: iid, dirichlet (label skew), "
                                  "shards (k label shards per device), quantity (unequal sizes), natural "
                                  "(the data's own devices: per-device folders or a CSV device column)")
    alpha: float = setting(0.5, group="devices", label="Dirichlet alpha (smaller = more skew)", bounds=POSITIVE,
                           help="Dirichlet concentration for --partition dirichlet (smaller: more skew)")
    shards_per_device: int = setting(2, group="devices", label="Shards per device", bounds=AT_LEAST_ONE,
                                     help="label shards per device for --partition shards")
    quantity_alpha: float = setting(1.0, group="devices", label="Quantity-skew alpha (smaller = more unequal)",
                                    bounds=POSITIVE,
                                    help="Dirichlet concentration of device sizes for --partition quantity")
    # -- training ------------------------------------------------------------------------
    model: str = setting("cnn", group="training", label="Model",
                         help="cnn, mlp, linear (linear/logistic regression), mobilenetv2 (colour images, from "
                              "scratch), or a path to your own model.py defining build(input_shape, num_classes) "
                              "(runs that file's code: only a local file you trust)")
    model_weights: str | None = setting(None, group="training", label="MobileNetV2 weights file",
                                        help="local MobileNetV2 weights without the top (nothing is downloaded)")
    strategy: str = setting("fedavg", group="training", label="Aggregation strategy", choices=lambda: tuple(STRATEGIES),
                            help="aggregation strategy")
    strategy_params: dict[str, float] = setting(default_factory=dict, group="training", label="Strategy parameters",
                                                flag="--strategy-param", metavar="NAME=VALUE",
                                                help="override a strategy hyper-parameter, e.g. proximal_mu=0.1")
    rounds: int | None = setting(5, group="training", label="Rounds", bounds=AT_LEAST_ONE,
                                 help="federated rounds (0: until interrupted)")  # None: run until stopped
    local_epochs: int = setting(1, group="training", label="Local epochs per round", bounds=AT_LEAST_ONE,
                                help="local epochs per round")
    batch_size: int = setting(32, group="training", label="Batch size", bounds=AT_LEAST_ONE, help="local batch size")
    learning_rate: float = setting(0.002, group="training", label="Learning rate", bounds=POSITIVE, flag="--lr",
                                   help="local learning rate")
    optimizer: str = setting("adam", group="training", label="Optimizer", choices=OPTIMIZERS,
                             help="local optimizer (see --optimizer-state for its state between rounds)")
    momentum: float = setting(0.9, group="training", label="Momentum", bounds=FRACTION,
                              help="local SGD momentum")
    # fresh by default: kept helped the MLP (10 IID devices, 5 rounds: 0.842 -> 0.849) but not the CNN (0.881 -> 0.878)
    optimizer_state: str = setting("fresh", group="training", label="Local optimizer state",
                                   choices=OPTIMIZER_STATES,
                                   help="kept: each device keeps its own optimizer state (Adam's moments, SGD's "
                                        "momentum) from round to round, as centralised training does (two "
                                        "model-sized arrays per device, on the device only); fresh: a new optimizer "
                                        f"every round; auto: kept up to {KEPT_STATE_MAX_DEVICES} devices, unless the "
                                        "strategy's math assumes a fresh one (SCAFFOLD, FedNova)")
    # -- personalisation: a model of each device's own, next to the global one --------------
    personalize: str = setting("none", group="personalisation", label="Personalisation", choices=PERSONALIZATIONS,
                               help="each device's own model, evaluated on its held-out data next to the global "
                                    "model: finetune (k local steps from the global model), fedper (a personal "
                                    "last Dense layer that never leaves the device), ditto (a personal model "
                                    "pulled toward the global one with lambda)")
    finetune_steps: int = setting(20, group="personalisation", label="Fine-tuning steps (finetune)",
                                  bounds=AT_LEAST_ONE,
                                  help="local steps of --personalize finetune, from the received global model")
    ditto_lambda: float = setting(0.1, group="personalisation", label="Ditto lambda (larger = closer to global)",
                                  bounds=NON_NEGATIVE,
                                  help="weight of --personalize ditto's proximal term lambda/2 ||v - w_global||^2")
    # -- each round --------------------------------------------------------------------
    min_devices: int = setting(1, group="round", label="Minimum devices per round", bounds=AT_LEAST_ONE,
                               help="minimum devices per round; fewer active devices means waiting")
    fraction: float = setting(1.0, group="round", label="Share of active devices sampled",
                              bounds=Bounds(0.0, 1.0, low_inclusive=False, high_inclusive=True),
                              help="share of active devices sampled each round")
    seed: int = setting(0, group="round", label="Random seed", bounds=SEED,
                        help="seed for partition, sampling and init")
    # -- speed ---------------------------------------------------------------------------
    # 2 threads beat 1 on 2 cores; stacks of 4 (see benchmarks); XLA pays only in long runs
    workers: int = setting(2, group="speed", label="Devices training in parallel", bounds=AT_LEAST_ONE,
                           help="threads training devices concurrently")
    stack_width: int = setting(4, group="speed", label="Devices trained together (vectorised)", bounds=AT_LEAST_ONE,
                               help="devices trained together as one vectorised computation (1: one by one)")
    xla: bool = setting(False, group="speed", label="Compile stacks with XLA",
                        help="compile stacks of dense-only models (e.g. the MLP) with XLA: faster rounds after "
                             "a compile of a few seconds")
    # float32 by default: bfloat16 changes results (in the third significant digit), so it is asked for
    precision: str = setting("float32", group="speed", label="Training precision", choices=PRECISIONS,
                             help="device training precision: bfloat16 computes in bfloat16 with float32 master "
                                  "weights (the server's model, aggregation and exports stay float32); auto picks "
                                  "bfloat16 only where the CPU has native bfloat16 (AVX512-BF16 or AMX)")
    eval_samples: int | None = setting(None, group="speed", label="Test samples evaluated per round (0 = all)",
                                       bounds=AT_LEAST_ONE,
                                       help="evaluate the global model each round on a fixed random sample of this "
                                            "many server test samples, and on all of them every --full-eval-every "
                                            "rounds and after the last round (default: all, every round)")
    full_eval_every: int = setting(10, group="speed", label="Full test-set evaluation every N rounds",
                                   bounds=AT_LEAST_ONE,
                                   help="with --eval-samples: rounds between evaluations on the whole test set")
    # -- unreliable and malicious devices -------------------------------------------------------
    faults: dict[int, str] = setting(default_factory=dict, group="behaviour", label="Faulty devices", flag="--fault",
                                     metavar="DEVICE=FAULT",
                                     help="simulate a faulty device: crash (raises mid-round), nan (sends NaN "
                                          "weights), scale (sends its update flipped and x10), random (sends "
                                          "random weights)")
    slowdowns: dict[int, float] = setting(default_factory=dict, group="behaviour", label="Slow devices",
                                          flag="--slowdown", metavar="DEVICE=FACTOR",
                                          help="multiply a device's simulated compute time")
    dropout: float = setting(0.0, group="behaviour", label="Dropout probability", bounds=FRACTION,
                             help="probability that a selected device does not answer in a round")
    round_deadline: float | None = setting(None, group="behaviour", label="Round deadline (simulated seconds)",
                                           bounds=POSITIVE, flag="--deadline",
                                           help="round deadline in simulated seconds; slower devices are dropped "
                                                "as stragglers")
    # -- privacy -------------------------------------------------------------------------
    clip_norm: float | None = setting(None, group="privacy", label="Clipping norm", bounds=POSITIVE, flag="--clip",
                                      help="clip each device's update to this L2 norm (DP-FedAvg)")
    noise_multiplier: float = setting(0.0, group="privacy", label="Central noise multiplier", bounds=NON_NEGATIVE,
                                      flag="--noise",
                                      help="central DP noise multiplier z (needs --clip): stddev z*clip/devices "
                                           "on the mean")
    local_noise_multiplier: float = setting(0.0, group="privacy", label="Local noise multiplier", bounds=NON_NEGATIVE,
                                            flag="--local-noise",
                                            help="local DP noise multiplier (needs --clip): each device adds "
                                                 "stddev z*clip")
    dp_delta: float = setting(1e-5, group="privacy", label="DP delta",
                              bounds=Bounds(0.0, 1.0, low_inclusive=False), help="delta for the reported epsilon")
    secure_aggregation: bool = setting(False, group="privacy", label="Secure aggregation",
                                       help="secure aggregation: the server only sees masked updates and their sum")
    # -- compression of device-to-server updates ------------------------------------------------
    compression: str = setting("none", group="privacy", label="Update compression", choices=COMPRESSIONS,
                               help="update compression: q8/q4 quantisation or top-k sparsification with error "
                                    "feedback")
    topk_fraction: float = setting(0.01, group="privacy", label="Top-k fraction kept",
                                   bounds=Bounds(0.0, 1.0, low_inclusive=False, high_inclusive=True),
                                   help="share of each tensor's entries sent with --compression topk")
    # -- tracking ------------------------------------------------------------------------------
    tensorboard: str | None = setting(None, group="output", label="TensorBoard folder",
                                      help="write TensorBoard event files (global and per-device metrics, bytes, "
                                           "epsilon) to a folder per run under this one")

    @property
    def uses_dp(self) -> bool:
        return self.clip_norm is not None and (self.noise_multiplier > 0 or self.local_noise_multiplier > 0)

    @property
    def keeps_optimizer_state(self) -> bool:
        """Whether devices start each round from their own optimizer state of their last round (see the setting)."""
        if self.optimizer_state != "auto":
            return self.optimizer_state == "kept"
        fresh_only = self.strategy in STRATEGIES and STRATEGIES[self.strategy].fresh_local_optimizer
        return self.num_devices <= KEPT_STATE_MAX_DEVICES and not fresh_only

    @property
    def devices_per_round(self) -> int:
        """Devices selected each round while all are active (``fraction`` of them, at least ``min_devices``)."""
        return min(self.num_devices, max(self.min_devices, math.ceil(self.fraction * self.num_devices)))

    @property
    def source_options(self) -> SourceOptions:
        """How to read a data set given by path."""
        return SourceOptions(self.image_size, self.color, self.target, self.task, self.device_column,
                             seed=self.seed)

    @property
    def partition_spec(self) -> PartitionSpec:
        return PartitionSpec(self.partition, self.alpha, self.shards_per_device, self.quantity_alpha)

    def with_changes(self, **changes) -> "FederationConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    def problems(self, model_names: tuple[str, ...] = BUILTIN_MODELS, devices_known: bool = True) -> list[str]:
        """Every reason this configuration cannot run, in words a user can act on.

        Each field is checked against its declared type, bounds and choices
        (:func:`engine.settings.field_problems`), then the combinations. ``devices_known=False`` skips the
        strategy's device-count conditions (e.g. Krum's n > 2f+2) where the devices only announce themselves
        at run time (Flower); rounds with too few updates are then reported.
        """
        bad = field_problems(self)
        found = list(bad.values())

        def need(condition: bool, message: str) -> None:
            if not condition and message not in found:
                found.append(message)

        def valid(*names: str) -> bool:
            return not any(name in bad for name in names)

        dataset_problem = source_problem(self.dataset)
        need(dataset_problem is None, dataset_problem or "")
        if self.model.endswith(".py"):
            need(os.path.isfile(os.path.expanduser(self.model)), f"model file {self.model} does not exist")
        else:
            need(self.model in model_names, f"model must be one of {', '.join(model_names)} or a .py file")
        if valid("strategy", "strategy_params"):
            found.extend(strategy_problems(self.strategy, self.strategy_params))
        if not valid("num_devices", "train_samples", "dataset", "min_devices", "shards_per_device",
                     "faults", "slowdowns", "clip_norm", "noise_multiplier", "local_noise_multiplier"):
            return found  # the combinations below need usable values
        if devices_known and valid("strategy", "strategy_params", "fraction"):
            found.extend(strategy_device_problems(self.strategy, self.strategy_params, self.devices_per_round))
        need(self.min_devices <= self.num_devices,
             f"minimum devices per round must be between 1 and the number of devices ({self.num_devices})")
        available = self.train_samples or TRAIN_SET_SIZES.get(self.dataset)
        need(available is None or self.num_devices <= available,
             f"{self.num_devices} devices need at least as many training samples, and there are "
             f"{available} (use fewer devices or more training samples)")
        for device, fault in self.faults.items():
            need(0 <= device < self.num_devices, f"fault set for device {device}, which does not exist")
            need(fault in FAULTS, f"fault {fault!r} must be one of {', '.join(FAULTS)}")
        for device, slowdown in self.slowdowns.items():
            need(0 <= device < self.num_devices, f"slowdown set for device {device}, which does not exist")
            need(math.isfinite(slowdown) and slowdown > 0, f"device {device}'s slowdown must be a positive number")
        need(self.clip_norm is not None or (self.noise_multiplier == 0 and self.local_noise_multiplier == 0),
             "differential privacy noise needs a clipping norm (the noise is scaled to it)")
        if self.strategy in STRATEGIES and not STRATEGIES[self.strategy].linear:
            need(not self.secure_aggregation,
                 f"secure aggregation only reveals the sum of updates; {self.strategy} needs each update "
                 "(use FedAvg, FedAvgM, FedProx, FedAdagrad, FedAdam or FedYogi)")
            need(self.noise_multiplier == 0,
                 f"central DP noise is added to the mean update; {self.strategy} does not use a mean")
        if self.strategy in STRATEGIES and STRATEGIES[self.strategy].needs_sgd:
            need(self.optimizer == "sgd",
                 f"{self.strategy}'s control variates assume local SGD; use --optimizer sgd (e.g. --lr 0.05)")
        if self.strategy in STRATEGIES and STRATEGIES[self.strategy].needs_received_loss:
            need(self.local_test_fraction > 0,
                 f"{self.strategy} weighs devices by their loss on their local test split; the local test share "
                 "must be above 0")
        found.extend(p for p in personalization_problems(self) if p not in found)
        if self.partition == "shards" and available is not None:
            need(self.num_devices * self.shards_per_device <= available, "more shards than training samples")
        return found

    def validate(self, model_names: tuple[str, ...] = BUILTIN_MODELS, devices_known: bool = True) -> "FederationConfig":
        found = self.problems(model_names, devices_known)
        if found:
            raise ConfigError(found)
        return self
