"""The dashboard's federation API on a real Flower deployment: :class:`FlowerFederation`.

``FlowerFederation(config)`` has the public methods and attributes of
:class:`engine.federation.Federation` (``start``, ``pause``, ``resume``,
``stop``, ``close``, ``wait``, ``set_active``, ``set_all_active``,
``set_rounds``, ``snapshot``, ``predict``, ``config``, ``dataset``,
``devices``, ``label_histogram``, ``global_weights``, ``run_id``, ``store``,
``strategy``), so a UI can drive either; ``engine.backends.create_federation``
picks one by name. The round loop itself is the engine's: the ServerApp runs
``engine.rounds.RoundRunner`` over ``flower_app.transport.GridTransport``;
this class only starts the processes, steers them through files and reads
what the ServerApp writes (it holds no copy of the round logic).

On :meth:`FlowerFederation.start` a background thread starts a
:class:`flower_app.loopback.LocalDeployment` on 127.0.0.1 (one SuperLink, one
SuperNode per device, holding the same partition as the in-process device of
that id), submits the run with ``flwr run --stream`` (the configuration mapped
onto run-config keys by :func:`run_config_for`, the inverse of
:func:`flower_app.config.federation_config`), and tails the ServerApp's
``results-file``: each JSON line becomes a :class:`engine.results.RoundResult`.
The ServerApp also saves the global model after each round
(``FL_FLOWER_WEIGHTS_FILE``, see ``server_app``), which :meth:`predict` uses.

Differences from the in-process engine (real processes cannot be steered mid-round):

* ``set_active`` rewrites ``deactivated-file``; the server re-reads it before
  each round, so the change applies from the next round not yet selected.
* ``pause`` holds the *next* round (every partition is listed as deactivated
  until ``resume``); the round in progress runs to its end.
* ``set_rounds`` before ``start`` sets the rounds; during a run it can only
  lower them (the run is then ended when that many rounds are done).
* ``start`` after the run ended does not continue it (a new Flower run would
  restart from the initial model): create a new federation instead.
* With a ``store``, the run is created here and the ServerApp records each
  round and checkpoint into it (``runs-dir`` and ``store-run-id`` run-config
  keys), so resume, compare and export work as for in-process runs.
* ``round_progress`` is 0 while a round runs (Flower reports nothing mid-round).
* Unsupported settings raise :class:`engine.config.ConfigError` at
  construction: see :func:`unsupported`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from engine.backend_base import FederationBackend
from data.datasets import DATASET_NAMES
from engine.config import BUILTIN_MODELS, ConfigError, FederationConfig
from engine.results import (
    DeviceProblem,
    DeviceRoundResult,
    DeviceState,
    DeviceStatus,
    RoundResult,
    RunStatus,
    Snapshot,
)
from engine.strategies import STRATEGIES
from flower_app.config import config_run_values, federation_config
from flower_app.loopback import CONNECTION, LocalDeployment, processes_tagged, run_config_arg

MAX_DEVICES = 8  # one SuperNode (and one TensorFlow ClientApp process per round) per device
WAIT_TIMEOUT = 30 * 24 * 3600.0  # the server waits for enough active devices as long as the engine does
POLL_SECONDS = 0.5
TEARDOWN_TIMEOUT = 10.0
WEIGHTS_FILE_VARIABLE = "FL_FLOWER_WEIGHTS_FILE"  # flower_app.server_app reads it (not imported: TensorFlow)


def unsupported(config: FederationConfig) -> list[str]:
    """Why ``config`` cannot run on Flower (empty: it can): only what real processes cannot do."""
    problems = []
    if config.dataset not in DATASET_NAMES or config.model not in BUILTIN_MODELS[:2]:
        problems.append("one's own data sets and the linear, MobileNetV2 and file models train in-process only "
                        "(Flower runs use the built-in sets with the CNN or MLP)")
    if config.secure_aggregation and config.min_devices < 2:
        problems.append("secure aggregation on Flower (its SecAgg+) needs at least 2 devices per round "
                        "(set minimum devices per round to 2 or more)")
    if any(factor != 1.0 for factor in config.slowdowns.values()):
        problems.append("simulated device slowdowns have no meaning for real processes (they take the time they take)")
    if config.strategy in STRATEGIES and STRATEGIES[config.strategy].in_process_only:
        problems.append(f"{config.strategy} runs in-process only: {STRATEGIES[config.strategy].in_process_only}")
    if config.num_devices > MAX_DEVICES:
        problems.append(
            f"{config.num_devices} devices is too many for Flower on this machine "
            f"(one SuperNode per device; at most {MAX_DEVICES})"
        )
    return problems


def run_config_for(
    config: FederationConfig, results_file: str | Path = "", deactivated_file: str | Path = ""
) -> dict[str, object]:
    """The Flower run config for ``config`` (the inverse of ``flower_app.config.federation_config``)."""
    return {**config_run_values(config), "wait-timeout": WAIT_TIMEOUT, "results-file": str(results_file),
            "deactivated-file": str(deactivated_file)}


def _check(config: FederationConfig) -> FederationConfig:
    from engine.models import ModelRegistry  # the models the ServerApp and ClientApps know

    config = config.validate(ModelRegistry().names())
    problems = unsupported(config)
    if not problems and federation_config(run_config_for(config), config.num_devices, config.data_dir) != config:
        problems.append("this configuration does not map exactly onto Flower run-config keys")
    if problems:
        raise ConfigError([f"Flower backend: {problem}" for problem in problems])
    return config


def _number(value: object) -> float:
    return float("nan") if value is None else float(value)


def round_result(line: dict, num_devices: int) -> RoundResult:
    """One ``results-file`` JSON line (``flower_app.records.round_record``) as the engine's RoundResult."""
    devices = tuple(
        DeviceRoundResult(
            device_id=int(key),
            samples=int(d["samples"]),
            train_loss=_number(d.get("train_loss")),
            train_accuracy=_number(d.get("train_accuracy")),
            received_accuracy=_number(d.get("received_accuracy")),
            accuracy=_number(d.get("accuracy")),
            loss=_number(d.get("loss")),
            seconds=_number(d.get("seconds")),
            simulated_seconds=_number(d.get("seconds")),  # real devices: no simulated slowdown
            bytes_up=int(d.get("bytes_up") or 0),
        )
        for key, d in sorted(line.get("devices", {}).items(), key=lambda item: int(item[0]))
    )
    problems = tuple(
        DeviceProblem(int(p["partition_id"]), str(p.get("kind", "failed")), str(p.get("reason", "")))
        for p in line.get("problems", [])
    )
    selected = tuple(int(i) for i in line.get("selected", []))
    deactivated = {int(i) for i in line.get("deactivated", [])}
    active = len([i for i in range(num_devices) if i not in deactivated]) or len(selected) or 1
    bytes_up = int(line.get("bytes_up") or 0)
    return RoundResult(
        round=int(line["round"]),
        global_loss=_number(line.get("global_loss")),
        global_accuracy=_number(line.get("global_accuracy")),
        seconds=_number(line.get("seconds")),
        train_seconds=_number(line.get("train_seconds")),
        eval_seconds=_number(line.get("eval_seconds")),
        selected=selected,
        devices=devices,
        problems=problems,
        bytes_down=int(line.get("bytes_down") or 0),
        bytes_up=bytes_up,
        confusion=np.asarray(line.get("confusion", []), dtype=np.int64),
        raw_bytes_up=int(line.get("raw_bytes_up") or bytes_up),
        sampling_rate=float(line.get("sampling_rate") or min(1.0, len(selected) / active)),
        epsilon=None if line.get("epsilon") is None else float(line["epsilon"]),
    )


class _Deployment(LocalDeployment):
    """A LocalDeployment whose processes also get ``extra_env`` (e.g. where to save the global model)."""

    def __init__(self, *args, extra_env: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_env = extra_env

    def env(self, home: str) -> dict[str, str]:
        env = super().env(home)
        env.update(self.extra_env)
        return env


class _Stopped(Exception):
    pass


class FlowerFederation(FederationBackend):
    """The same run as ``engine.federation.Federation(config)``, on a Flower SuperLink and SuperNodes."""

    def __init__(
        self,
        config: FederationConfig,
        dataset=None,
        registry=None,
        progress: Callable[[str], None] | None = None,
        label: str = "",
        workdir: str | Path | None = None,
        run_timeout: float | None = None,
        store=None,
    ):
        import keras

        from data.datasets import load_dataset
        from data.partition import label_histogram
        from devices.trainer import ModelReplica, OptimizerSpec
        from engine.federation import build_devices
        from engine.models import ModelRegistry
        from engine.strategies import build_strategy

        if config.data_dir:  # the Flower processes run in other folders
            config = config.with_changes(data_dir=str(Path(config.data_dir).resolve()))
        self.config = _check(config)
        self.label = label
        self.run_timeout = run_timeout  # None: as long as it takes
        self.dataset = dataset or load_dataset(config.dataset, config.data_dir, progress)
        self.devices = build_devices(self.dataset, self.config)  # the partition every SuperNode cuts
        self.label_histogram = label_histogram([d.data.y_train for d in self.devices], self.dataset.num_classes)
        self.strategy = build_strategy(config.strategy, config.strategy_params)  # name/params only: Flower aggregates
        self.store = store  # an engine.store.RunStore the ServerApp records this run into, or None
        self.run_id = store.create_run(self.config, label) if store is not None else None
        self.training_note = "Each device trains in its own Flower SuperNode process."
        self.flower_run_id: int | None = None
        registry = registry or ModelRegistry()
        keras.utils.set_random_seed(config.seed)  # the same initial global model as the ServerApp's
        self._predictor = ModelReplica(
            lambda: registry.build(config.model, self.dataset.image_shape, self.dataset.num_classes),
            OptimizerSpec(config.optimizer, config.momentum),
        )
        self._weights = self._predictor.get_weights()
        self._weights_version = 0
        self._predictor_version = 0
        self._predictor_lock = threading.Lock()

        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="flower-federation-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.results_file = self.workdir / "rounds.jsonl"
        self.deactivated_file = self.workdir / "deactivated.txt"
        self.weights_file = self.workdir / "global-weights.npz"
        self.deployment = _Deployment(
            self.workdir / "deployment", config.num_devices, data_dir=config.data_dir, output_dir=self.workdir,
            extra_env={WEIGHTS_FILE_VARIABLE: str(self.weights_file),  # runs-dir is confined to FL_FLOWER_RUNS_DIR
                       **({"FL_FLOWER_RUNS_DIR": str(Path(store.root).resolve())} if store is not None else {})},
        )
        self.leftovers: list[int] = []  # tagged processes that outlived the teardown (then killed)

        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = RunStatus.READY
        self._message = "Ready: press start (Flower backend: real SuperLink and SuperNodes on 127.0.0.1)."
        self._total_rounds = config.rounds
        self._history: list[RoundResult] = []
        self._active = [True] * config.num_devices
        self._paused = False
        self._started_at: float | None = None
        self._elapsed_before = 0.0
        self._results_offset = 0
        self._write_deactivated()

    # -- control ------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                if not self._thread.is_alive():
                    self._message = (
                        f"{self._message} A Flower run cannot be continued: start a new federation."
                    )
                return
            self._status = RunStatus.WAITING
            self._message = f"Starting Flower SuperLink and {self.config.num_devices} SuperNodes..."
            self._started_at = time.perf_counter()
            self._thread = threading.Thread(target=self._run, name="flower-federation", daemon=True)
            self._thread.start()

    def pause(self) -> None:
        """Hold the next round (the round in progress on the SuperNodes runs to its end)."""
        with self._lock:
            if self._status not in (RunStatus.RUNNING, RunStatus.WAITING) or self._thread is None:
                return
            self._paused = True
            self._status = RunStatus.PAUSED
            self._message = "Paused: the round in progress finishes, the next one waits until you resume."
        self._write_deactivated()

    def resume(self) -> None:
        with self._lock:
            if self._status is not RunStatus.PAUSED:
                return
            self._paused = False
            self._status, self._message = RunStatus.RUNNING, "Resumed."
        self._write_deactivated()

    def stop(self, wait: bool = True, timeout: float | None = 30.0) -> None:
        """End the Flower run and every process of the deployment; completed rounds are kept."""
        self._stopping.set()
        thread = self._thread
        if wait and thread is not None:
            thread.join(timeout)

    def close(self) -> None:
        """Stop, and delete the working folder (kept after a failure, for its logs)."""
        self.stop(wait=True, timeout=60.0)
        thread = self._thread
        if self._own_workdir and (thread is None or not thread.is_alive()) and self._status is not RunStatus.FAILED:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _activity_changed(self) -> None:
        self._write_deactivated()  # the server re-reads it before selecting the next round

    def set_rounds(self, rounds: int | None) -> None:
        """Before ``start``: any number (None: until stopped). During a run: only fewer rounds."""
        if rounds is not None and rounds < 1:
            raise ValueError("rounds must be at least 1")
        with self._lock:
            if self._thread is None:
                self._total_rounds = rounds
                self.config = self.config.with_changes(rounds=rounds)
                return
            submitted = self.config.rounds
            if rounds is not None and (submitted is None or rounds <= submitted):
                self._total_rounds = rounds
            else:
                self._message = (
                    f"A running Flower run cannot get more rounds than it was started with "
                    f"({submitted if submitted is not None else 'until stopped'}); it can only end sooner."
                )

    # -- reading --------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self._lock:
            running_for = time.perf_counter() - self._started_at if self._started_at is not None else 0.0
            last = self._history[-1] if self._history else None
            return Snapshot(
                status=self._status,
                message=self._message,
                round=len(self._history),
                total_rounds=self._total_rounds,
                round_progress=0.0,
                elapsed=self._elapsed_before + running_for,
                devices=tuple(self._device_state(d.device_id, d.data.num_train, last) for d in self.devices),
                history=tuple(self._history),
                model_version=self._weights_version,
            )

    @property
    def global_weights(self):
        with self._lock:
            return self._weights

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities of the latest global model (saved by the ServerApp) for images in [0, 1]."""
        with self._lock:
            weights, version = self._weights, self._weights_version
        with self._predictor_lock:
            if version != self._predictor_version:
                self._predictor.set_weights(weights)
                self._predictor_version = version
            return self._predictor.predict(images)

    # -- internals -------------------------------------------------------------------
    def _device_state(self, device_id: int, samples: int, last: RoundResult | None) -> DeviceState:
        active = self._active[device_id]
        status, detail = DeviceStatus.IDLE, ""
        if last is not None:
            problem = next((p for p in last.problems if p.device_id == device_id), None)
            result = next((d for d in last.devices if d.device_id == device_id), None)
            if problem is not None:
                status = DeviceStatus.REJECTED if problem.kind == "rejected" else DeviceStatus.FAILED
                detail = f"round {last.round}: {problem.reason}"
            elif result is not None:
                status = DeviceStatus.SENT
                detail = f"round {last.round}: local accuracy {result.accuracy:.3f}"
        if not active:
            status, detail = DeviceStatus.INACTIVE, "deactivated: sits out from the next round"
        return DeviceState(device_id=device_id, active=active, status=status, samples=samples, detail=detail)

    def _write_deactivated(self) -> None:
        """The deactivated-file the ServerApp re-reads before each round (replaced atomically)."""
        with self._lock:
            ids = range(len(self._active)) if self._paused else [i for i, on in enumerate(self._active) if not on]
            text = ",".join(str(i) for i in ids) + "\n"
            temporary = self.deactivated_file.with_name(self.deactivated_file.name + ".tmp")
            temporary.write_text(text)
            temporary.replace(self.deactivated_file)

    def _set(self, status: RunStatus, message: str) -> None:
        with self._lock:
            if self._status is RunStatus.PAUSED and status in (RunStatus.RUNNING, RunStatus.WAITING):
                return  # a pause wins until resume
            self._status, self._message = status, message

    def _running_status(self) -> None:
        with self._lock:
            active = sum(self._active)
            server_round = len(self._history) + 1
        if active < self.config.min_devices:
            self._set(RunStatus.WAITING,
                      f"Waiting for devices: {active} active, at least {self.config.min_devices} needed.")
        else:
            extra = " (the first round includes the ServerApp's and ClientApps' start-up)" if server_round == 1 else ""
            self._set(RunStatus.RUNNING, f"Round {server_round} in progress on {active} Flower SuperNode(s){extra}.")

    def _read_new_rounds(self) -> None:
        if not self.results_file.exists():
            return
        with self.results_file.open("rb") as handle:
            handle.seek(self._results_offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written is read next time
        if not complete:
            return
        self._results_offset += len(complete)
        results = []
        for line in complete.decode("utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                if self.flower_run_id is None and record.get("run_id") is not None:
                    self.flower_run_id = int(record["run_id"])
                results.append(round_result(record, self.config.num_devices))
        weights, version = self._load_weights()
        with self._lock:
            self._history.extend(results)
            if weights is not None and version > self._weights_version:
                self._weights, self._weights_version = weights, version
        if results:
            last = results[-1]
            self._set(RunStatus.RUNNING, f"Round {last.round}: accuracy {last.global_accuracy:.3f}.")

    def _load_weights(self):
        try:
            with np.load(self.weights_file) as saved:
                names = sorted((n for n in saved.files if n.startswith("arr_")), key=lambda n: int(n[4:]))
                return [saved[n] for n in names], int(saved["round"])
        except (FileNotFoundError, OSError, KeyError, ValueError):
            return None, -1

    def _rounds_done(self) -> bool:
        with self._lock:
            return self._total_rounds is not None and len(self._history) >= self._total_rounds

    def _submit(self) -> subprocess.Popen:
        deployment = self.deployment
        run_config = run_config_for(self.config, self.results_file, self.deactivated_file)
        if self.store is not None:
            run_config.update({"runs-dir": str(Path(self.store.root).resolve()), "store-run-id": self.run_id})
        log = (deployment.workdir / "flwr-run.log").open("wb")
        deployment._logs.append(log)  # closed by deployment.stop()
        process = subprocess.Popen(
            ["flwr", "run", ".", CONNECTION, "--stream", "--run-config", run_config_arg(run_config)],
            cwd=deployment.project_root, env=deployment.env("cli-home"), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deployment.processes["flwr-run"] = process
        return process

    def _run(self) -> None:
        status, message = RunStatus.FAILED, "Flower run failed."
        try:
            self.deployment.start()
            if self._stopping.is_set():
                raise _Stopped
            process = self._submit()
            deadline = None if self.run_timeout is None else time.monotonic() + self.run_timeout
            self._running_status()
            while True:
                self._read_new_rounds()
                if self._stopping.is_set():
                    raise _Stopped
                if self._rounds_done():
                    status, message = RunStatus.FINISHED, f"Finished {len(self._history)} rounds."
                    break
                code = process.poll()
                if code is not None:
                    self._read_new_rounds()
                    if self._rounds_done():
                        status, message = RunStatus.FINISHED, f"Finished {len(self._history)} rounds."
                    else:
                        tail = self.deployment.log("flwr-run")[-1500:]
                        message = (f"Flower run ended (flwr run exit code {code}) after {len(self._history)} "
                                   f"round(s); logs in {self.deployment.workdir}. {tail}")
                    break
                if deadline is not None and time.monotonic() > deadline:
                    message = f"Flower run did not finish within {self.run_timeout:g} s; logs in {self.workdir}."
                    break
                self._running_status_if_idle()
                self._stopping.wait(POLL_SECONDS)
        except _Stopped:
            status, message = RunStatus.STOPPED, f"Stopped after {len(self._history)} completed rounds."
        except Exception as error:  # keep the UI alive and say what happened
            message = f"Flower run failed: {type(error).__name__}: {error} (logs in {self.deployment.workdir})"
        finally:
            with self._lock:
                self._message = f"{message} Shutting down the Flower processes..."
            try:
                self.leftovers = self.deployment.stop(timeout=TEARDOWN_TIMEOUT)
            except Exception as error:  # noqa: BLE001 - report, never leave the thread without a status
                message += f" (teardown error: {error})"
            if self.leftovers:
                message += f" ({len(self.leftovers)} leftover process(es) killed)"
            self._record_status(status)
            with self._lock:
                if self._started_at is not None:
                    self._elapsed_before += time.perf_counter() - self._started_at
                self._started_at = None
                self._paused = False
                self._status, self._message = status, message

    def _record_status(self, status: RunStatus) -> None:
        """The run store's status after the run (the ServerApp cannot record a stop from outside)."""
        if self.store is None:
            return
        try:
            self.store.set_status(self.run_id, status.value)
        except Exception:  # noqa: BLE001 - a status that could not be saved must not hide the run's own
            pass

    def _running_status_if_idle(self) -> None:
        """Between result lines: WAITING when too few devices are active, else RUNNING (keeps round messages)."""
        with self._lock:
            active = sum(self._active)
            current = self._status
        if active < self.config.min_devices or current is RunStatus.WAITING:
            self._running_status()

    def remaining_processes(self) -> list[int]:
        """Pids of this deployment's processes still alive (empty after a clean stop)."""
        return processes_tagged(self.deployment.tag)

