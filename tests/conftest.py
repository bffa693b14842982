"""Shared fixtures: the real data sets from FL_DATA_DIR (default ../shared/datasets), one Flower deployment."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.xdist_groups import pytest_xdist_make_scheduler  # noqa: F401  (-n 2: which tests share a worker)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two xdist workers share the 2 cores: one TensorFlow intra-op thread each (the Flower processes a worker
    # starts inherit it) instead of two workers x two spinning threads. Set before TensorFlow is imported.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def run_to_finish(federation, timeout: float = 180):
    """Start ``federation``, wait for it, check that it finished (not failed or stopped): its last snapshot."""
    from engine.results import RunStatus

    federation.start()
    snapshot = federation.wait(timeout=timeout)
    assert snapshot.status is RunStatus.FINISHED, snapshot.message
    return snapshot


@pytest.fixture(scope="session", autouse=True)
def runs_dir(tmp_path_factory) -> Path:
    """Runs recorded by tests (CLI subprocesses included) go to a temporary folder, never ./runs."""
    folder = tmp_path_factory.mktemp("runs")
    os.environ["FL_RUNS_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def data_dir() -> str:
    folder = os.environ.get("FL_DATA_DIR") or str(PROJECT_ROOT.parent / "shared" / "datasets")
    if not (Path(folder) / "fashion-mnist").is_dir():
        pytest.fail(f"Fashion-MNIST IDX files not found under {folder}; set FL_DATA_DIR")
    folder = str(Path(folder).resolve())  # Flower's processes run in other folders
    os.environ["FL_DATA_DIR"] = folder
    return folder


@pytest.fixture(scope="session")
def fashion(data_dir):
    from data.datasets import load_dataset

    return load_dataset("fashion-mnist", data_dir)


@pytest.fixture
def make_federation(fashion):
    """Build small federations on real data (MLP, 3 devices x 1,000 samples) and close them afterwards."""
    from engine.config import FederationConfig
    from engine.federation import Federation

    created = []

    def make(**changes):
        settings = dict(model="mlp", num_devices=3, train_samples=3000, test_samples=1000, rounds=2)
        settings.update(changes)
        federation = Federation(FederationConfig(**settings), dataset=fashion)
        created.append(federation)
        return federation

    yield make
    for federation in created:
        federation.close()


FLOWER_SUPERNODES = 3


@pytest.fixture(scope="session")
def flower_deployment(data_dir, tmp_path_factory):
    """One real Flower deployment for the whole session, started by the first test that asks for it.

    A ``flower_app.loopback.LocalDeployment`` as a real deployment is set up: a SuperLink with TLS and
    SuperNode authentication, ``FLOWER_SUPERNODES`` SuperNodes (node config ``partition-id=i
    num-partitions=3``, registered keys) each with its long-lived ClientApp worker. Starting one costs
    tens of seconds on 2 cores, so the Flower test files share it: each submits its own runs with
    ``flower_deployment.run(run_config, project_root=...)`` (a copy of the app with test components is
    fine: the workers install each app they are sent, by its hash).

    Rules for its users: give every file a run names (``results-file``, ``weights-file``...) a name of
    your own test (the output folder is shared); do not stop, kill or add SuperNodes on it (tests count
    its online nodes): a test that needs other SuperNodes starts its own ``LocalDeployment``. At the end
    of the session it is stopped, and a process left behind fails the session.
    """
    from flower_app.loopback import LocalDeployment

    local = LocalDeployment(tmp_path_factory.mktemp("flower-shared"), FLOWER_SUPERNODES, data_dir=data_dir)
    try:
        local.start()
        yield local
    finally:
        started = time.monotonic()
        leftovers = local.stop()
        seconds = time.monotonic() - started
    assert leftovers == [], f"processes survived the shared Flower deployment (killed now): {leftovers}"
    assert all(process.poll() is not None for process in local.processes.values())
    assert seconds < 30, f"stopping the shared Flower deployment took {seconds:.0f} s"


@pytest.fixture
def server_identity():
    """Messages built outside a Flower process need a task identity (a ServerApp's node id is 1)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 42, 1, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def wait_until(condition, timeout: float = 60.0, interval: float = 0.05):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")
