"""Safe by default: a local-only Control API, confined run-config files, kept CAs.

Node authentication and the ClientApp workers' secret are checked against real
processes in ``tests/test_flower.py``, on the loopback deployment it shares.
"""

from __future__ import annotations

import subprocess
import pytest

from flower_app.config import server_settings
from flower_app.loopback import PROJECT_ROOT
from flower_app.output_dir import OutsideOutputDir, confined_path, output_dir

SCRIPTS = PROJECT_ROOT / "scripts"


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


def test_certificates_module_keeps_a_ca_makes_key_pairs_and_owner_only_secrets(tmp_path):
    """``flower_app.certificates``: what the loopback and the dashboard's SuperLink make their credentials with."""
    import stat

    from flower_app.certificates import CertificateError, make_certificates, new_key_pair, write_secret

    make_certificates(tmp_path, 1, force=False)
    assert (tmp_path / "supernode-0").is_file() and not (tmp_path / "supernode-1").exists()
    ca = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(CertificateError, match="refusing to replace"):
        make_certificates(tmp_path, 1, force=False)
    assert (tmp_path / "ca.crt").read_bytes() == ca
    old = (tmp_path / "supernode-0.pub").read_text()
    new_key_pair(tmp_path / "supernode-0")  # replaced: a new device, a new key
    assert (tmp_path / "supernode-0.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert (tmp_path / "supernode-0.pub").read_text() != old
    secret = write_secret(tmp_path / "home" / "superexec.secret")
    content = secret.read_bytes()
    assert len(content) == 32 and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert write_secret(secret).read_bytes() == content  # kept: the SuperNode and its worker share it
