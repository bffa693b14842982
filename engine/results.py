"""Round results and snapshots: immutable records the UI and CLI read."""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field

import numpy as np


class RunStatus(str, enum.Enum):
    READY = "ready"
    RUNNING = "running"
    PAUSED = "paused"
    WAITING = "waiting for devices"
    STOPPED = "stopped"
    FINISHED = "finished"
    FAILED = "failed"


class DeviceStatus(str, enum.Enum):
    IDLE = "idle"
    TRAINING = "training"
    SENT = "sent update"
    FAILED = "failed"
    REJECTED = "rejected"
    DROPPED = "dropped"
    INACTIVE = "inactive"
    OFFLINE = "not connected"  # a device on another machine whose node is not connected now


@dataclass(frozen=True)
class DeviceRoundResult:
    """One device's part in one round."""

    device_id: int
    samples: int
    train_loss: float
    train_accuracy: float
    received_accuracy: float
    accuracy: float  # its trained model on its local test split
    loss: float
    seconds: float
    simulated_seconds: float  # seconds times the device's slowdown
    bytes_up: int
    personalized_accuracy: float | None = None  # its personalised model on its local test split (None: none)
    personalized_loss: float | None = None
    staleness: int = 0  # fedbuff: server steps between the model it trained from and the one its update went into


@dataclass(frozen=True)
class DeviceProblem:
    """A device that was selected but whose update did not make it into the aggregate."""

    device_id: int
    kind: str  # "failed" (raised), "rejected" (invalid update), "straggler" or "dropped out"
    reason: str


@dataclass(frozen=True)
class RoundResult:
    round: int
    global_loss: float
    global_accuracy: float
    seconds: float
    train_seconds: float
    eval_seconds: float
    selected: tuple[int, ...]
    devices: tuple[DeviceRoundResult, ...]
    problems: tuple[DeviceProblem, ...]
    bytes_down: int
    bytes_up: int  # serialised size of what the devices sent
    confusion: np.ndarray = field(repr=False, compare=False)  # (classes, classes): true x predicted
    epsilon: float | None = None  # DP budget spent so far (at the configured delta)
    raw_bytes_up: int = 0  # what the same updates would take as plain float32
    sampling_rate: float = 1.0  # selected / active devices (for privacy accounting)
    test_samples: int = 0  # server test samples the global model was evaluated on (0: not recorded)
    global_mae: float | None = None  # regression only: global_loss is then the MSE
    global_r2: float | None = None
    personalized_accuracy: float | None = None  # --personalize: mean over devices of their personalised models'
    device_global_accuracy: float | None = None  # mean over devices of the received global model's (same data)
    kept: tuple[int, ...] | None = None  # devices whose models a selecting rule (Krum, Bulyan) used; None: all
    simulated_time: float = 0.0  # in local steps of a full-speed device: its slowest update; fedbuff: since the last step

    @property
    def is_regression(self) -> bool:
        return self.global_mae is not None

    @property
    def score(self) -> float:
        """The task's headline score, higher is better: accuracy, or R² for a regression (0 when undefined)."""
        value = self.global_r2 if self.is_regression else self.global_accuracy
        return value if value is not None and math.isfinite(value) else 0.0

    @property
    def compression_ratio(self) -> float:
        return self.raw_bytes_up / self.bytes_up if self.bytes_up else 1.0

    def to_json_dict(self) -> dict:
        record = asdict(self)
        record["confusion"] = self.confusion.tolist()
        record["selected"] = list(self.selected)
        return record


@dataclass(frozen=True)
class DeviceState:
    device_id: int
    active: bool
    status: DeviceStatus
    samples: int
    detail: str = ""


@dataclass(frozen=True)
class Snapshot:
    """A consistent view of a federation at one moment."""

    status: RunStatus
    message: str
    round: int  # rounds completed
    total_rounds: int | None
    round_progress: float  # 0..1 for the round in progress
    elapsed: float
    devices: tuple[DeviceState, ...]
    history: tuple[RoundResult, ...]
    model_version: int
    save_problems: tuple[str, ...] = ()  # the latest rounds that could not be stored, one line each

    @property
    def latest(self) -> RoundResult | None:
        return self.history[-1] if self.history else None

    @property
    def is_live(self) -> bool:
        return self.status in (RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.WAITING)
