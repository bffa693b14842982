"""Per-session federation management: create, replace, close; datasets are shared across sessions.

Each browser tab (Streamlit session) owns one :class:`~engine.federation.Federation`
in ``st.session_state``. Datasets are immutable and cached once per (name, folder)
for all sessions. A session-scoped resource stops a tab's training when the tab
disconnects, so abandoned tabs do not keep using the CPU.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

import streamlit as st

from data.datasets import Dataset
from data.errors import DataError
from data.sources import load_source
from data.spec import SourceOptions
from engine.model_defaults import GENERAL_DEFAULTS, ModelError, training_defaults
from engine.backends import DeploymentSettings
from engine.data_fit import data_problem
from engine.config import ConfigError, FederationConfig
from engine.errors import UserError, one_line
from engine.settings import reword
from engine.store import short_id

if TYPE_CHECKING:  # importing the federation pulls in TensorFlow; done lazily in create_federation
    from engine.federation import Federation

FEDERATION_KEY = "federation"
ERROR_KEY = "create_error"
REQUEST_KEY = "create_request"
AUTO_CREATED_KEY = "auto_create_attempted"
RESUME_KEY = "resume_request"
RESUMED_KEY = "resumed_run"  # the run id of a federation reopened from the Runs page
SETUP_SEED_KEY = "resumed_setup"  # not "setup_...": those are the widgets' keys


class DatasetSlot:
    """Loads one data set at most once (thread-safe) and keeps it for every session."""

    def __init__(self, name: str, data_dir: str | None, options: SourceOptions = SourceOptions()):
        self.name, self.data_dir, self.options = name, data_dir, options
        self._lock = threading.Lock()
        self._dataset: Dataset | None = None

    def get(self, progress: Callable[[str], None]) -> Dataset:
        """The data set, loading it first (reporting through ``progress``) if needed."""
        with self._lock:
            if self._dataset is None:
                self._dataset = load_source(self.name, self.data_dir, self.options, progress)
            return self._dataset


@st.cache_resource(show_spinner=False, max_entries=8)
def dataset_slot(name: str, data_dir: str | None, options: SourceOptions = SourceOptions()) -> DatasetSlot:
    """The shared slot for (name, data_dir, options); the slot, not this cache, does the slow load with live
    progress."""
    return DatasetSlot(name, data_dir, options)


def requested_config(federation: Federation) -> FederationConfig:
    """The setup that built ``federation`` (its config may differ: natural device count, model defaults)."""
    return getattr(federation, "requested_config", federation.config)


def fit_to_data(config: FederationConfig, dataset: Dataset, report: Callable[[str], None]) -> FederationConfig:
    """The natural partition takes the data's own devices; untouched training settings take the model's."""
    if config.partition == "natural" and dataset.group_names:
        count = len(dataset.group_names)
        config = config.with_changes(num_devices=count, min_devices=min(config.min_devices, count))
    defaults = training_defaults(config.model, dataset.task)
    if (config.optimizer, config.learning_rate) == (GENERAL_DEFAULTS.optimizer, GENERAL_DEFAULTS.learning_rate) \
            and defaults != GENERAL_DEFAULTS:
        report(f"Using {config.model}'s defaults for a {dataset.task}: {defaults.optimizer}, "
               f"learning rate {defaults.learning_rate:g}")
        config = config.with_changes(optimizer=defaults.optimizer, learning_rate=defaults.learning_rate,
                                     momentum=defaults.momentum)
    return config


class SessionFederations:
    """The federations one session created, stopped together when Streamlit lets go of the session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._federations: list[Federation] = []

    def add(self, federation: Federation) -> None:
        with self._lock:
            self._federations.append(federation)

    def discard(self, federation: Federation) -> None:
        with self._lock:
            if federation in self._federations:
                self._federations.remove(federation)

    def stop_all(self) -> None:
        """Stop training without waiting. Not ``close``: a reconnecting tab keeps its federation and may continue."""
        with self._lock:
            federations = list(self._federations)
        for federation in federations:
            federation.stop(wait=False)


def _release(federations: SessionFederations) -> None:
    # Streamlit calls this when the tab disconnects (closed, reloaded or a network drop).
    federations.stop_all()


@st.cache_resource(scope="session", on_release=_release, show_spinner=False)
def session_federations() -> SessionFederations:
    return SessionFederations()


def get_federation() -> Federation | None:
    return st.session_state.get(FEDERATION_KEY)


def close_federation() -> None:
    """Stop and forget this session's federation (if any)."""
    federation = st.session_state.pop(FEDERATION_KEY, None)
    if federation is not None:
        session_federations().discard(federation)
        federation.close()


def request_create(config: FederationConfig) -> None:
    """Ask the next script run to (re)build the federation from ``config`` (used from button callbacks)."""
    st.session_state[REQUEST_KEY] = config


def take_create_request(config: FederationConfig, auto_create: bool) -> FederationConfig | None:
    """The configuration to build now: an explicit request, or ``config`` on the very first load."""
    requested = st.session_state.pop(REQUEST_KEY, None)
    if requested is not None:
        return requested
    if auto_create and not st.session_state.get(AUTO_CREATED_KEY):
        st.session_state[AUTO_CREATED_KEY] = True
        if get_federation() is None and not config.problems():
            return config
    return None


BACKEND_KEY = "setup_backend"
# Where a deployment's SuperLink is: session state of the setup panel, not FederationConfig fields
DEPLOYMENT_KEYS = {name: f"setup_deployment_{name}"
                   for name in ("start_superlink", "address", "certificates", "supernode_keys", "superexec_secret")}


def deployment_settings() -> DeploymentSettings:
    """The setup panel's deployment settings (defaults for what it does not show)."""
    defaults, session = DeploymentSettings(), st.session_state
    return DeploymentSettings(
        start_superlink=session.get(DEPLOYMENT_KEYS["start_superlink"], "start") == "start",
        address=str(session.get(DEPLOYMENT_KEYS["address"], defaults.address)),
        certificates=str(session.get(DEPLOYMENT_KEYS["certificates"], defaults.certificates)),
        supernode_keys=int(session.get(DEPLOYMENT_KEYS["supernode_keys"], defaults.supernode_keys)),
        superexec_secret=str(session.get(DEPLOYMENT_KEYS["superexec_secret"], defaults.superexec_secret)),
    )


def deployment_of(federation) -> DeploymentSettings | None:
    """The deployment settings ``federation`` was built with (None: not a deployment)."""
    return getattr(federation, "deployment_settings", None)


BACKEND_LABELS = {  # the setup panel's names for engine.backends.BACKENDS
    "in-process": "Simulated on this machine",
    "flower": "Flower loopback (try it on one machine: SuperNodes started for you)",
    "deployment": "A Flower deployment (SuperNodes join from other machines)",
}


def selected_backend() -> str:
    """Where the setup panel says devices run: "in-process" (default) or "flower"."""
    return st.session_state.get(BACKEND_KEY, "in-process")


def selected_deployment() -> DeploymentSettings | None:
    """The setup panel's deployment settings when devices run on a deployment, else None."""
    return deployment_settings() if selected_backend() == "deployment" else None


def transport_problems(config: FederationConfig) -> list[str]:
    """What the selected backend cannot run, shown in place like every other setup problem."""
    from engine.backends import backend_problems

    problems = backend_problems(config, selected_backend())
    if selected_backend() == "deployment":
        problems += [f"Deployment: {problem}" for problem in deployment_settings().problems()]
    return problems


def transport_notes(config: FederationConfig) -> list[str]:
    """What the selected backend runs differently from in-process (it runs), shown in place under the setup."""
    from engine.backends import backend_notes

    return backend_notes(config, selected_backend())


def backend_of(federation: Federation) -> str:
    """Where ``federation``'s devices run: "in-process", or the name of its remote transport's backend."""
    remote = getattr(federation, "remote", None)
    return "in-process" if remote is None else remote.backend


def create_federation(config: FederationConfig) -> Federation | None:
    """Build a federation (showing progress) and make it this session's.

    On failure the previous federation stays, the reason is kept for display, and None is returned.
    """
    st.session_state.pop(ERROR_KEY, None)
    label = f"Creating a federation of {config.num_devices} devices on {config.dataset}"
    with st.status(label + "...", expanded=True) as status:
        try:
            status.write(f"Loading the {config.dataset} data set...")
            dataset = dataset_slot(config.dataset, config.data_dir, config.source_options).get(progress=status.write)
            requested, config = config, fit_to_data(config, dataset, status.write)
            problem = data_problem(dataset, config, audience="dashboard")  # the settings' labels, not CLI flags
            if problem:
                return _failed(status, problem)
            status.write(f"Splitting the data across {config.num_devices} devices and building the "
                         f"{config.model.upper()} model...")
            from app.runs import current_store, run_label
            from engine.backends import create_federation as build  # imports TensorFlow (slow the first time)

            deployment = selected_deployment()
            if deployment is not None:
                status.write(f"Reaching the SuperLink ({deployment.address}) and submitting the run...")
            federation = build(config, selected_backend(), dataset=dataset, store=current_store(),
                               label=run_label(config, len(dataset.y_train)), deployment=deployment)
            federation.deployment_settings = deployment
        except (DataError, ModelError) as error:  # one line on what is wrong with the data or model
            return _failed(status, str(error))
        except ConfigError as error:
            return _failed(status, "Invalid setup: " + "; ".join(error.problems))
        except UserError as error:  # e.g. a damaged run index: the message says what to do
            return _failed(status, str(error))
        except ValueError as error:  # e.g. a partition that cannot give every device enough samples
            return _failed(status, f"This setup cannot be built: {error}")
        except Exception as error:  # never show a traceback; say what went wrong instead
            return _failed(status, f"Could not create the federation: {one_line(error)}")
        status.update(label=f"Federation ready: {config.num_devices} devices.", state="complete", expanded=False)
    federation.requested_config = requested  # what the setup panel said, before fitting it to the data
    _adopt(federation)
    return federation


def _adopt(federation: Federation) -> None:
    """Make ``federation`` this session's, closing the previous one."""
    close_federation()
    st.session_state[FEDERATION_KEY] = federation
    session_federations().add(federation)


def request_resume(run_id: str, more_rounds: int | None) -> None:
    """Ask the next script run to reopen stored run ``run_id`` as the live federation (button callback)."""
    st.session_state[RESUME_KEY] = (run_id, more_rounds)


def seed_setup(config: FederationConfig, widget_keys) -> None:
    """Make ``config`` (e.g. a resumed run's) the setup panel's defaults, its widgets drawn afresh from it.

    The widgets' own values are forgotten rather than overwritten: a widget given both a default and a
    value through the Session State API makes Streamlit log a warning (and the default is ignored).
    """
    for key in widget_keys:
        st.session_state.pop(key, None)
    st.session_state[SETUP_SEED_KEY] = config


def setup_seed() -> FederationConfig | None:
    """The configuration :func:`seed_setup` made the setup panel's defaults, if any."""
    return st.session_state.get(SETUP_SEED_KEY)


def take_resume_request() -> tuple[str, int | None] | None:
    return st.session_state.pop(RESUME_KEY, None)


def resume_run(run_id: str, more_rounds: int | None) -> Federation | None:
    """Reopen a recorded run (same devices, its history and last checkpoint) as this session's federation."""
    st.session_state.pop(ERROR_KEY, None)
    backend = selected_backend()  # where the setup panel says devices run now, whatever the run used before
    deployment = selected_deployment()
    with st.status(f"Reopening run {short_id(run_id)}...", expanded=True) as status:
        try:
            from app.runs import current_store
            from engine.backends import reopen_federation

            store = current_store()
            config = store.load_config(run_id)
            dataset = dataset_slot(config.dataset, config.data_dir, config.source_options).get(progress=status.write)
            if backend != "in-process":
                status.write(f"Where its devices run: {BACKEND_LABELS[backend]}...")
            federation = reopen_federation(store, run_id, more_rounds, backend, dataset=dataset,
                                           deployment=deployment, progress=status.write)
            federation.deployment_settings = deployment
        except ConfigError as error:  # e.g. what the Flower transport cannot run
            return _failed(status, "Cannot resume this run here: " + "; ".join(error.problems))
        except UserError as error:  # no such run, no intact checkpoint, a damaged index
            return _failed(status, f"Cannot resume this run: {error}")
        except (DataError, ModelError) as error:
            return _failed(status, str(error))
        except Exception as error:  # never show a traceback
            return _failed(status, f"Could not resume the run: {one_line(error)}")
        status.update(label=f"Run {short_id(run_id)} reopened at round {federation.snapshot().round}.", state="complete",
                      expanded=False)
    _adopt(federation)
    st.session_state[RESUMED_KEY] = run_id
    return federation


def is_resumed(federation: Federation | None) -> bool:
    """Whether ``federation`` is a run reopened from the Runs page (its page then starts with the controls)."""
    run_id = getattr(federation, "run_id", None)
    return run_id is not None and st.session_state.get(RESUMED_KEY) == run_id


def _failed(status, message: str) -> None:
    status.update(label="That did not work.", state="error", expanded=False)
    st.session_state[ERROR_KEY] = reword(FederationConfig, message, "dashboard")  # labels, not CLI flags
    return None


def creation_error() -> str | None:
    return st.session_state.get(ERROR_KEY)
