"""What a federation writes while it trains: the run store (rounds, checkpoints, device state) and TensorBoard.

Storage is never allowed to end a run: a write that fails is reported (kept in ``problems`` and said in the
round's message) and training goes on; only a run that cannot be recorded at all refuses to start.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Collection

from data.spec import Preprocessing
from devices.messages import Weights
from engine.config import FederationConfig
from engine.errors import one_line
from engine.lease import RunLease
from engine.results import RoundResult
from engine.run_files import PREPROCESSING_FILE
from engine.store import RunStore, StoreError
from engine.tracking import TensorBoardLog

MAX_SAVE_PROBLEMS = 20  # the snapshot keeps the latest storage failures, not every one of a long run
STORAGE_ERRORS = (OSError, sqlite3.Error, StoreError)


def save_preprocessing(store: RunStore, run_id: str, spec: Preprocessing) -> None:
    """The run's preprocessing, next to its checkpoints, for exports and predictions of its models."""
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PREPROCESSING_FILE).write_text(spec.to_json())


class RunRecorder:
    """Records one federation's run: created in the store when training first starts, then round by round.

    ``store`` None records nothing (but TensorBoard, when asked); ``run_id`` names a stored run being resumed.
    Thread-safe: the round thread writes rounds while the UI thread records device activity.
    """

    def __init__(self, store: RunStore | None, run_id: str | None, label: str, config: FederationConfig):
        self.store = store
        self.run_id = run_id
        self._label = label
        self._config = config
        self._tensorboard: TensorBoardLog | None = None
        self._lock = threading.Lock()
        self._problems: list[str] = []

    @property
    def problems(self) -> tuple[str, ...]:
        """The latest storage failures, oldest first."""
        with self._lock:
            return tuple(self._problems)

    def begin(self, preprocessing: Preprocessing, inactive: Collection[int]) -> str | None:
        """Record the run if it is new and open TensorBoard; a message when the run cannot be recorded."""
        if self.store is not None and self.run_id is None:
            try:
                self.run_id = self.store.create_run(self._config, self._label)
                save_preprocessing(self.store, self.run_id, preprocessing)
                self.store.save_inactive_devices(self.run_id, inactive)  # switched off before it was recorded
            except (StoreError, OSError) as error:
                return f"Cannot record this run: {error}"
        if self._config.tensorboard and self._tensorboard is None:
            self._tensorboard = TensorBoardLog(self._config.tensorboard,
                                               self.run_id or time.strftime("run-%Y%m%d-%H%M%S"))
        return None

    def lease(self) -> RunLease | None:
        """The run's lease for as long as it trains (raises :class:`StoreError` when another holds it)."""
        return self.store.lease(self.run_id) if self.store is not None else None

    def save_activity(self, inactive: Collection[int]) -> None:
        """Record the devices switched off (once the run is recorded), so a resume keeps them off."""
        if self.store is None or self.run_id is None:
            return
        try:
            self.store.save_inactive_devices(self.run_id, inactive)
        except STORAGE_ERRORS as error:  # reported like a round that could not be saved; training goes on
            self._report(f"Device activity was not saved ({one_line(error)}).")

    def save_round(self, weights: Weights, result: RoundResult, device_states: dict[int, dict[str, Weights]],
                   strategy_state: dict[str, Weights]) -> str:
        """Persist a completed round; "" or the sentence (with a leading space) saying what was not saved."""
        try:
            if self._tensorboard is not None:
                self._tensorboard.write(result)
        except OSError as error:
            return f" Could not write TensorBoard events ({error}); training goes on."
        if self.store is None:
            return ""
        private = self._config.secure_aggregation  # under secure aggregation nothing per device
        try:
            if device_states and not private:
                self.store.save_device_states(self.run_id, result.round, device_states)
            self.store.record_round(self.run_id, result, weights, strategy_state, private=private)
        except STORAGE_ERRORS as error:
            problem = f"Round {result.round} was not saved ({one_line(error)}); training goes on."
            self._report(problem)
            return " " + problem
        return ""

    def set_status(self, status: str) -> str:
        """Record the run's status; "" or the clause saying it could not be saved."""
        if self.store is None:
            return ""
        try:
            self.store.set_status(self.run_id, status)
        except STORAGE_ERRORS as error:
            return f" (could not save the run status: {one_line(error)})"
        return ""

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()

    def _report(self, problem: str) -> None:
        with self._lock:
            self._problems = [*self._problems, problem][-MAX_SAVE_PROBLEMS:]
