"""The federation: devices, the global model, and a background thread running rounds.

All public methods are thread-safe. A UI calls the control methods at any time
and reads :meth:`Federation.snapshot`, an immutable view that is cheap to take
and never waits for a round to finish.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from functools import partial
from typing import Callable

import numpy as np

from data.datasets import Dataset
from data.sources import load_source
from devices.messages import Weights
from devices.pool import WorkerPool
from devices.trainer import ModelReplica, OptimizerSpec, TrainingStopped, batches_per_epoch
from engine.backend_base import FederationBackend
from engine.config import FederationConfig
from engine.control import RunControl
from engine.errors import one_line
from engine.models import ModelRegistry
from engine.results import DeviceState, DeviceStatus, RoundResult, RunStatus, Snapshot
from engine.hardware import cpu_info
from engine.precision import precision_note, resolve_precision
from engine.personalization import training_note as personalization_note
from engine.async_rounds import round_runner
from engine.recording import RunRecorder
from engine.remote import RemoteTransport, remote_device_state
from engine.setup import build_devices, data_histogram, sample_spec, server_test_set
from engine.composition import restore_strategy_state, strategy_state
from engine.store import Checkpoint, RunStore, StoreError
from engine.transport import InProcessTransport
from engine.replicas import Replicas, training_mode
from engine.strategies import build_strategy
from engine.warm_up import WarmUp

WAIT_POLL_SECONDS = 0.5


class Federation(FederationBackend):
    """A federated run: create it, then ``start`` it; it trains in its own thread."""

    def __init__(
        self,
        config: FederationConfig,
        dataset: Dataset | None = None,
        registry: ModelRegistry | None = None,
        progress: Callable[[str], None] | None = None,
        store: RunStore | None = None,
        run_id: str | None = None,
        label: str = "",
        transport: RemoteTransport | None = None,
    ):
        """``transport``: where the devices are (default: simulated here, on a worker pool), e.g. Flower nodes."""
        registry = registry or ModelRegistry(config.model_weights)
        self.config = config.validate(registry.names())
        self.dataset = dataset or load_source(config.dataset, config.data_dir, config.source_options, progress)
        self.devices = build_devices(self.dataset, config)
        self.label_histogram, self.histogram_labels = data_histogram(self.dataset, self.devices)

        self.precision = resolve_precision(config.precision, cpu_info().native_bf16)
        replicas = Replicas(
            partial(registry.build, config.model, self.dataset.input_shape, self.dataset.num_classes),
            OptimizerSpec(config.optimizer, config.momentum), sample_spec(self.dataset),
            self.precision.precision, config.xla,
        )
        evaluator = replicas.first_server(config.seed, config.model, self.dataset.input_shape)
        self._make_predictor = replicas.server  # built on the first prediction: a model build off "create"
        self._predictor: ModelReplica | None = None
        self._predictor_lock = threading.Lock()
        self._predictor_version = -1
        self._weights: Weights = evaluator.get_weights()
        if transport is None:
            stacks, mode_note = training_mode(evaluator.model, config)
            notes = (mode_note, precision_note(self.precision))
            replicas = replace(replicas, template=evaluator.model)  # stacks read its layers: no model build each
            self._pool: WorkerPool | None = WorkerPool(replicas.device, config.workers,
                                                       replicas.stack if stacks else None)
        else:
            notes, self._pool = (transport.training_note,), None
        self.training_note = " ".join(filter(None, (*notes, personalization_note(config))))
        self._control = RunControl()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._status = RunStatus.READY
        self._message = "Ready: press start."
        self._total_rounds = config.rounds
        self._history: list[RoundResult] = []
        self._active = [True] * config.num_devices
        self._device_status = [DeviceStatus.IDLE] * config.num_devices
        self._device_detail = [""] * config.num_devices
        self._round_steps: dict[int, tuple[int, int]] = {}
        self._elapsed_before = 0.0
        self._started_at: float | None = None
        self._closed = False
        self.strategy = build_strategy(config.strategy, config.strategy_params)
        self.strategy.bind(config.num_devices)
        self.store = store
        self._recorder = RunRecorder(store, run_id, label, self.config)  # a new run is recorded at its first start
        self.preprocessing = replace(self.dataset.preprocessing, input_shape=self.dataset.input_shape,
                                     task=self.dataset.task, class_names=self.dataset.class_names)
        self.remote = transport
        self.transport = transport or InProcessTransport(self.devices, self._pool, config.stack_width,
                                                         self._set_device_progress)
        self._runner = round_runner(self.strategy)(  # fedbuff: no synchronous rounds
            config,
            self.transport,
            evaluator,
            self.strategy,
            server_test_set(self.dataset, config),
            self._set_device_status,
        )
        # build and trace what round 1 needs in the background: "create" returns at once, round 1 waits if needed
        self._warm_up = WarmUp(self._runner, self.transport, self.devices, self._weights, self._pool,
                               config.batch_size, config.rounds)

    @classmethod
    def reopen(
        cls,
        store: RunStore,
        run_id: str,
        more_rounds: int | None = None,
        dataset: Dataset | None = None,
        registry: ModelRegistry | None = None,
        progress: Callable[[str], None] | None = None,
        transport: Callable[[FederationConfig], tuple[FederationConfig, RemoteTransport]] | None = None,
    ) -> "Federation":
        """Reopen a stored run at its last completed round, with the same devices and partition.

        ``more_rounds`` rounds are added to the completed ones (None: run until stopped). ``transport``
        (default: simulated devices here) makes the remote transport for the run's configuration, e.g.
        ``engine.backends.remote_transport``: it returns the configuration checked for it and the transport.
        What each device must remember (SCAFFOLD's control variate...) is restored from the run store: into
        the simulated devices, or handed to the remote transport to send to its devices.
        """
        history = store.load_history(run_id)
        config = store.load_config(run_id)
        total = None if more_rounds is None else len(history) + more_rounds
        checkpoint = store.load_checkpoint(run_id) if history else None
        if checkpoint is not None and checkpoint.round < len(history):  # the newest checkpoints are unreadable
            store.rewind(run_id, checkpoint.round)
            history = history[:checkpoint.round]
            if progress is not None:
                progress(f"{checkpoint.note}: rounds after {checkpoint.round} will be trained again.")
        total = None if more_rounds is None else len(history) + more_rounds
        config, remote = config.with_changes(rounds=total), None
        if transport is not None:
            config, remote = transport(config)
        try:
            federation = cls(config, dataset, registry, progress, store=store, run_id=run_id, transport=remote)
        except BaseException as error:
            if remote is not None:
                remote.close("failed", one_line(error))
            raise
        try:
            federation._restore(history, checkpoint)
            off = store.load_inactive_devices(run_id)
            with federation._lock:
                federation._active = [device_id not in off for device_id in range(config.num_devices)]
            states = store.load_device_states(run_id, len(history))
            if remote is not None:
                remote.restore_device_states(states)
            for device_id, state in states.items():
                federation.devices[device_id].restore_state(state)
        except BaseException:
            federation.close()  # its workers, and the remote transport's processes
            raise
        return federation

    def _restore(self, history: list[RoundResult], checkpoint: Checkpoint | None) -> None:
        with self._lock:
            self._history = list(history)
            if checkpoint is not None:
                self._weights = checkpoint.weights
                restore_strategy_state(self.strategy, checkpoint.strategy_state)
            note = f" ({checkpoint.note}.)" if checkpoint is not None and checkpoint.note else ""
            self._message = f"Resumed after round {len(history)}: press Continue to train on.{note}"
        self._runner.replay(history)

    # -- control ------------------------------------------------------------------
    def start(self) -> None:
        """Start training (or continue after finishing/stopping, with more rounds)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this federation was closed; create a new one")
            if self._thread is not None and self._thread.is_alive():
                return
            refused = self._recorder.begin(self.preprocessing, self._inactive_locked())
            if refused:
                self._status, self._message = RunStatus.FAILED, refused
                return
            self._control = RunControl()
            self._status, self._message = RunStatus.RUNNING, "Starting..."
            self._started_at = time.perf_counter()
            self._thread = threading.Thread(target=self._run, name="federation-rounds", daemon=True)
            self._thread.start()

    def pause(self) -> None:
        """Pause at the next local batch chunk; devices keep their place."""
        with self._lock:
            if self._status in (RunStatus.RUNNING, RunStatus.WAITING):
                self._control.pause()
                self._status, self._message = RunStatus.PAUSED, "Paused."

    def resume(self) -> None:
        with self._lock:
            if self._status is RunStatus.PAUSED:
                self._control.resume()
                self._status, self._message = RunStatus.RUNNING, "Resumed."

    def stop(self, wait: bool = True, timeout: float | None = 30.0) -> None:
        """Stop promptly; the round in progress is abandoned, completed rounds are kept."""
        self._control.stop()
        thread = self._thread
        if wait and thread is not None:
            thread.join(timeout)

    def close(self) -> None:
        """Stop and release the worker threads; the federation cannot be started again."""
        self.stop()
        with self._lock:
            self._closed = True
        if self._pool is not None:  # the rounds have stopped; only a warm-up trace may still run
            self._pool.shutdown(wait=False)
        self._warm_up.close()
        if self.remote is not None:
            status = {RunStatus.FAILED: "failed", RunStatus.STOPPED: "stopped"}.get(self.snapshot().status, "completed")
            self.remote.close(status, self.snapshot().message)
        self._recorder.close()

    def _activity_changed(self) -> None:
        self._save_activity()
        self._control.poke()  # wake a run waiting for devices

    def _save_activity(self) -> None:
        """Record the devices switched off with the run, so a resume keeps them off."""
        with self._lock:
            off = self._inactive_locked()
        self._recorder.save_activity(off)

    def _inactive_locked(self) -> list[int]:
        return [device_id for device_id, on in enumerate(self._active) if not on]

    def set_rounds(self, rounds: int | None) -> None:
        """Change the total number of rounds (None: run until stopped)."""
        if rounds is not None and rounds < 1:
            raise ValueError("rounds must be at least 1")
        with self._lock:
            self._total_rounds = rounds

    # -- reading --------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self._lock:
            done = sum(s for s, _ in self._round_steps.values())
            total = sum(t for _, t in self._round_steps.values())
            running_for = time.perf_counter() - self._started_at if self._is_running_locked() else 0.0
            return Snapshot(
                status=self._status,
                message=self._message,
                round=len(self._history),
                total_rounds=self._total_rounds,
                round_progress=done / total if total else 0.0,
                elapsed=self._elapsed_before + running_for,
                devices=tuple(self._device_state(d) for d in self.devices),
                history=tuple(self._history),
                model_version=len(self._history),
                save_problems=self._recorder.problems,
            )

    @property
    def run_id(self) -> str | None:
        """The run's id in the store: None until a new run first starts training (or without a store)."""
        return self._recorder.run_id

    @property
    def global_weights(self) -> Weights:
        with self._lock:
            return self._weights

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities of the current global model for float images in [0, 1], shape (n, 28, 28)."""
        with self._lock:
            weights, version = self._weights, len(self._history)
        with self._predictor_lock:
            if self._predictor is None:
                self._predictor = self._make_predictor()
            if version != self._predictor_version:
                self._predictor.set_weights(weights)
                self._predictor_version = version
            return self._predictor.predict(images)

    # -- the round loop -----------------------------------------------------------------
    def _is_running_locked(self) -> bool:
        return self._started_at is not None and self._thread is not None and self._thread.is_alive()

    def _device_state(self, device) -> DeviceState:
        device_id = device.device_id
        state = DeviceState(device_id=device_id, active=self._active[device_id],
                            status=self._visible_status(device_id), samples=device.data.num_train,
                            detail=self._device_detail[device_id])
        return state if self.remote is None else remote_device_state(state, self.remote.node_view(device_id))

    def _visible_status(self, device_id: int) -> DeviceStatus:
        status = self._device_status[device_id]
        if not self._active[device_id] and status is not DeviceStatus.TRAINING:
            return DeviceStatus.INACTIVE
        return status

    def _set_device_status(self, device_id: int, status: DeviceStatus, detail: str) -> None:
        with self._lock:
            self._device_status[device_id] = status
            self._device_detail[device_id] = detail
            if status is DeviceStatus.TRAINING:
                self._round_steps[device_id] = (0, self._local_steps(device_id))
            elif device_id in self._round_steps:
                total = self._round_steps[device_id][1]
                self._round_steps[device_id] = (total, total)

    def _local_steps(self, device_id: int) -> int:
        samples = self.devices[device_id].data.num_train
        return batches_per_epoch(samples, self.config.batch_size) * self.config.local_epochs

    def _set_device_progress(self, device_id: int, steps: int) -> None:
        with self._lock:
            _, total = self._round_steps.get(device_id, (0, 0))
            self._round_steps[device_id] = (steps, total)

    def _set_state(self, status: RunStatus, message: str) -> None:
        with self._lock:
            if self._status is RunStatus.PAUSED and status is RunStatus.RUNNING:
                return  # a pause requested meanwhile wins
            self._status, self._message = status, message

    def _rounds_left(self) -> bool:
        with self._lock:
            return self._total_rounds is None or len(self._history) < self._total_rounds

    def _run(self) -> None:
        """The round loop, holding the run's lease so no other federation trains or deletes it meanwhile."""
        try:
            lease = self._recorder.lease()
        except StoreError as error:
            self._end(RunStatus.FAILED, f"Cannot train: {error}.", record=False)
            return
        try:
            self._rounds()
        finally:
            if lease is not None:
                lease.release()

    def _rounds(self) -> None:
        control = self._control
        try:
            if self.store is not None:
                self.store.set_status(self.run_id, RunStatus.RUNNING.value)
            self._warm_up.before_round_one()  # milliseconds after "create": its stacks then wait for their traces
            while self._rounds_left():
                control.checkpoint()
                with self._lock:
                    switched_on = [i for i, on in enumerate(self._active) if on]
                    server_round = len(self._history) + 1
                    weights = self._weights
                    last = server_round == self._total_rounds
                active = self.transport.reachable(switched_on)
                if len(active) < self.config.min_devices:
                    away = f" ({len(switched_on) - len(active)} not connected)" if len(active) < len(switched_on) else ""
                    self._set_state(
                        RunStatus.WAITING,
                        f"Waiting for devices: {len(active)} active{away}, at least {self.config.min_devices} needed.",
                    )
                    control.wait(WAIT_POLL_SECONDS)
                    continue
                self._begin_round(server_round)
                new_weights, result = self._runner.run(server_round, weights, active, control.checkpoint, last)
                self._finish_round(new_weights, result)
            self._end(RunStatus.FINISHED, f"Finished {len(self._history)} rounds.")
        except TrainingStopped:
            self._end(RunStatus.STOPPED, f"Stopped after {len(self._history)} completed rounds.")
        except Exception as error:  # keep the app alive and say what happened, in one line
            self._end(RunStatus.FAILED, f"Training failed: {one_line(error)}")

    def _begin_round(self, server_round: int) -> None:
        with self._lock:
            self._round_steps = {}
            for device_id in range(len(self.devices)):
                self._device_status[device_id] = DeviceStatus.IDLE
                self._device_detail[device_id] = ""
        self._set_state(RunStatus.RUNNING, f"Round {server_round} in progress.")

    def _finish_round(self, weights: Weights, result: RoundResult) -> None:
        saved = self._save_round(weights, result)
        with self._lock:
            self._weights = weights
            self._history.append(result)
            self._round_steps = {}
        summary = f"Round {result.round}: accuracy {result.global_accuracy:.3f}." + saved
        if not result.devices:
            summary += " No valid updates: the global model is unchanged."
        elif result.problems:
            summary += f" {len(result.problems)} device(s) dropped: " + "; ".join(
                f"device {p.device_id} {p.kind} ({p.reason})" for p in result.problems
            )
        self._set_state(RunStatus.RUNNING, summary)

    def _save_round(self, weights: Weights, result: RoundResult) -> str:
        """Persist the round (run store, TensorBoard) where asked; a storage error is reported, not fatal."""
        states = self.remote.device_states() if self.remote is not None else \
            {d.device_id: d.state() for d in self.devices if d.state()}
        return self._recorder.save_round(weights, result, states, strategy_state(self.strategy))

    def _end(self, status: RunStatus, message: str, record: bool = True) -> None:
        if record:
            message += self._recorder.set_status(status.value)
        with self._lock:
            if self._started_at is not None:
                self._elapsed_before += time.perf_counter() - self._started_at
            self._started_at = None
            self._status, self._message = status, message
            self._round_steps = {}
            self._device_status = [
                DeviceStatus.IDLE if s is DeviceStatus.TRAINING else s for s in self._device_status
            ]
