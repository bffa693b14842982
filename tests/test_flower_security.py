"""Safe by default: node authentication, a local-only Control API, confined run-config files, kept CAs.

The first test starts a real SuperLink (TLS, ``--enable-supernode-auth``) with
one registered SuperNode, then SuperNodes that are not registered or present no
key at all: the SuperLink refuses them and only the registered one joins.
"""

from __future__ import annotations

import json
import subprocess
import time
import pytest

from flower_app.config import server_settings
from flower_app.loopback import PROJECT_ROOT, LocalDeployment
from flower_app.output_dir import OutsideOutputDir, confined_path, output_dir

SCRIPTS = PROJECT_ROOT / "scripts"


def connected_nodes(deployment: LocalDeployment) -> list[dict]:
    listed = deployment.flwr("supernode", "ls", "loopback", "--format", "json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    return json.loads(listed.stdout)["nodes"]


def wait_for_exit(process: subprocess.Popen, timeout: float) -> int | None:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.timeout(180)
def test_superlink_refuses_supernodes_that_are_not_registered(tmp_path, data_dir):
    with LocalDeployment(tmp_path, 1, data_dir=data_dir, isolation="subprocess") as deployment:
        stranger_key = tmp_path / "stranger"
        subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(stranger_key)],
                       check=True, timeout=30)
        stranger = deployment.start_supernode(0, key=stranger_key, name="supernode-stranger")
        keyless = deployment.start_supernode(0, name="supernode-keyless", authenticate=False)

        for name, process in (("supernode-stranger", stranger), ("supernode-keyless", keyless)):
            code = wait_for_exit(process, 60)
            log = deployment.log(name)
            assert code not in (None, 0), log[-2000:]
            assert "could not establish a connection to the SuperLink" in log, log[-2000:]  # refused, not broken
        assert "must be registered" in deployment.log("supernode-keyless")
        deadline = time.monotonic() + 60
        while not (nodes := [n for n in connected_nodes(deployment) if n.get("status") == "online"]):
            assert time.monotonic() < deadline, connected_nodes(deployment)
            time.sleep(1)
        assert len(nodes) == 1 and deployment.processes["supernode-0"].poll() is None, nodes


def test_control_and_runtime_apis_answer_only_the_loopback_address():
    """Flower's real SuperLink app behind scripts/superlink.py's guard, called from two addresses."""
    import importlib.util

    from fastapi.testclient import TestClient
    from flwr.superlink.main import create_app

    spec = importlib.util.spec_from_file_location("superlink_launcher", SCRIPTS / "superlink.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    app = launcher.guard(create_app)()

    remote = TestClient(app, client=("192.0.2.7", 50000))
    refused = remote.post("/v1/control/list-runs", content=b"")
    assert refused.status_code == 403 and "own machine only" in refused.text
    assert remote.post("/v1/runtime/acquire-task", content=b"").status_code == 403
    assert remote.get("/health").status_code == 200  # the rest (Fleet API, health) stays reachable
    assert remote.post("/v1/fleet/pull-messages", content=b"").status_code != 403
    local = TestClient(app, client=("127.0.0.1", 50000))
    assert local.post("/v1/control/list-runs", content=b"").status_code != 403
    assert launcher.is_loopback(("::1", 1)) and not launcher.is_loopback(("10.0.0.1", 1))
    assert not launcher.is_loopback(None)


@pytest.mark.parametrize("value", ["../escape.jsonl", "/etc/passwd", "sub/../../escape", "."])
def test_run_config_file_names_outside_the_output_folder_are_refused(tmp_path, value):
    folder = tmp_path / "output"
    folder.mkdir()
    with pytest.raises(OutsideOutputDir, match="outside the server's output folder") as refused:
        server_settings({"results-file": value}, folder=folder)
    assert "\n" not in str(refused.value) and value in str(refused.value)


def test_run_config_file_names_inside_the_output_folder_are_accepted(tmp_path, monkeypatch):
    folder = tmp_path / "output"
    (folder / "runs").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (folder / "link").symlink_to(tmp_path / "elsewhere")
    settings = server_settings({"results-file": "runs/r.jsonl", "deactivated-file": str(folder / "off.txt")},
                               folder=folder)
    assert settings.results_file == folder.resolve() / "runs" / "r.jsonl"
    assert settings.deactivated_file == folder.resolve() / "off.txt"
    with pytest.raises(OutsideOutputDir):  # a symbolic link out of the folder does not get out
        confined_path("weights-file", "link/w.npz", folder)
    monkeypatch.setenv("FL_FLOWER_OUTPUT_DIR", str(folder))
    assert output_dir() == folder.resolve()
    monkeypatch.delenv("FL_FLOWER_OUTPUT_DIR")
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    assert output_dir() == (tmp_path / "home" / "fl-watch-output").resolve()


def test_make_certificates_keeps_an_existing_ca_unless_forced(tmp_path):
    script = ["bash", str(SCRIPTS / "make_certificates.sh")]
    first = subprocess.run([*script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    ca = (tmp_path / "ca.crt").read_bytes()
    again = subprocess.run([*script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "--force" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert (tmp_path / "ca.crt").read_bytes() == ca  # untouched
    forced = subprocess.run([*script, "--force", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert forced.returncode == 0 and (tmp_path / "ca.crt").read_bytes() != ca
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "server.crt")],
                              capture_output=True, text=True, timeout=30)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.timeout(120)
def test_only_the_worker_with_the_secret_can_take_a_supernodes_tasks(tmp_path):
    """A real SuperNode in process isolation: acquiring its tasks needs the secret its worker is given."""
    import os
    import sys

    import httpx

    from flower_app.processes import free_port, terminate, wait_for_port

    worker = _load_script("clientapp_worker")
    secret = tmp_path / "superexec.secret"
    secret.write_bytes(os.urandom(32))
    port = free_port()
    supernode = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "supernode.py"), "--insecure", "--superlink", f"127.0.0.1:{free_port()}",
         "--isolation", "process", "--host", "127.0.0.1", "--port", str(port),
         "--superexec-auth-secret-file", str(secret), "--node-config", "partition-id=0 num-partitions=1"],
        env={**os.environ, "FLWR_HOME": str(tmp_path / "home"), "FLWR_TELEMETRY_ENABLED": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for_port(port, 60, supernode)
        request = worker.AcquireTaskRequest(supported_task_types=[worker.TaskType.CLIENT_APP])
        options = ["--runtime-api-address", f"127.0.0.1:{port}", "--insecure"]
        signed = worker.runtime_client(worker.parse_args([*options, "--superexec-auth-secret-file", str(secret)]))
        assert not signed.AcquireTask(request).HasField("task")  # accepted: there is simply no work yet
        anonymous = worker.RuntimeHttpClient.from_server_address(  # no retries: Flower's stop the process on a 401
            server_address=f"127.0.0.1:{port}", insecure=True, root_certificates=None,
            interceptors=[worker.RuntimeVersionHttpInterceptor(component_name=worker.COMPONENT)])
        with pytest.raises(httpx.HTTPStatusError) as refused:
            anonymous.AcquireTask(request)
        assert refused.value.response.status_code in (401, 403)
    finally:
        terminate(supernode)


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
