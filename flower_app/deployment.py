"""A Flower deployment driven by this process: a SuperLink it starts (or attaches to), SuperNodes from anywhere.

:func:`deployment_federation` returns the engine's ``Federation`` on a
SuperLink whose SuperNodes run on other machines (or are started separately):

* **start** (default): a SuperLink on ``settings.address`` with TLS and
  SuperNode authentication (``--enable-supernode-auth``), its Control and
  Runtime APIs answering this machine only (``scripts/superlink.py``), in
  process isolation (this process plays the ServerApp). The certificates
  folder (``settings.certificates``) holds the CA (``ca.crt``: copy it to each
  device), the SuperLink's certificate and ``supernode_keys`` SuperNode key
  pairs (``supernode-N`` / ``.pub``: give each device its private key); they
  are made with ``scripts/make_certificates.sh`` when the folder has no CA yet
  and reused otherwise. Every ``supernode-*.pub`` in the folder is registered
  with the SuperLink, so only SuperNodes holding one of those keys can join.
* **attach**: a SuperLink already running on this machine (or reached through
  an SSH tunnel: its Control and Runtime APIs answer localhost only), in process
  isolation, by address with its CA certificate (``ca.crt`` in the
  certificates folder) and, if it has one, its SuperExec secret file.

Each SuperNode declares its device (``--node-config 'partition-id=I
num-partitions=N'``, N the federation's number of devices) and joins whenever
it is ready; the device view shows it from then on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from engine.backends import DeploymentSettings, federation_over
from flower_app.backend import Loopback, check, serverapp_transport
from flower_app.certificates import make_certificates
from flower_app.loopback import PROJECT_ROOT
from flower_app.processes import wait_for_port
from flower_app.scratch import ScratchFolder, scratch_folder
from flower_app.serverapp_link import LinkError, SuperLinkAddress

STARTUP_TIMEOUT = 60.0


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9093`` for IPv6) -> (host, port), or ValueError saying what is expected."""
    host, _, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a SuperLink address is host:port, e.g. 0.0.0.0:9093; got {address!r}")
    return host, int(port)


def local_address(host: str, port: int) -> str:
    """How this machine reaches a SuperLink bound to ``host``."""
    return f"127.0.0.1:{port}" if host in ("0.0.0.0", "::", "") else f"{host}:{port}"


def ensure_certificates(folder: Path, supernode_keys: int, host: str) -> None:
    """The CA, the SuperLink's certificate and the SuperNode keys in ``folder``: made if missing, else kept."""
    if (folder / "ca.crt").exists() and (folder / "server.crt").exists():
        return
    names = [name for name in {host, socket.gethostname()} if name not in ("0.0.0.0", "::", "127.0.0.1", "localhost")]
    make_certificates(folder, supernode_keys, sorted(names), force=False)  # an existing CA is never replaced


class StartedSuperLink(Loopback):
    """A SuperLink on ``settings.address`` (TLS, SuperNode authentication) and no SuperNodes of its own."""

    def __init__(self, workdir: Path, settings: DeploymentSettings, data_dir: str | None,
                 scratch: ScratchFolder | None = None):
        super().__init__(workdir, 0, data_dir=data_dir, output_dir=workdir, scratch=scratch)
        self.host, self.port = split_address(settings.address)
        self.certificates = Path(settings.certificates).expanduser().resolve()
        self.settings = settings

    def superlink_command(self) -> list[str]:
        command = super().superlink_command()
        command[command.index("--host") + 1] = self.host
        return command

    def start(self) -> "StartedSuperLink":
        self.workdir.mkdir(parents=True, exist_ok=True)
        ensure_certificates(self.certificates, self.settings.supernode_keys, self.host)
        superlink = self._start("superlink", self.superlink_command(), "superlink-home")
        try:
            wait_for_port(self.port, STARTUP_TIMEOUT, superlink)
        except Exception:
            raise LinkError(f"the SuperLink did not start on {self.settings.address}: "
                            f"{' '.join(self.log('superlink').split())[-400:]}") from None
        self._write_cli_config()
        keys = sorted(self.certificates.glob("supernode-*.pub"))
        self.register_keys(keys)
        return self

    def register_keys(self, keys: list[Path]) -> None:
        """``flwr supernode register`` each public key (one CLI each, in parallel)."""
        running = [subprocess.Popen(["flwr", "supernode", "register", str(key), "loopback"], cwd=self.project_root,
                                    env=self.env("cli-home"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True) for key in keys]
        for key, process in zip(keys, running):
            output = process.communicate(timeout=STARTUP_TIMEOUT)[0]
            if process.returncode != 0 and "already" not in output.lower():
                raise LinkError(f"registering {key.name} failed: {' '.join(output.split())[-300:]}")

    def link(self) -> SuperLinkAddress:
        return SuperLinkAddress(local_address(self.host, self.port), self.certificates / "ca.crt",
                                self.superexec_secret)

    def _write_cli_config(self) -> None:
        home = self.workdir / "cli-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(self.link().cli_config("loopback"))


def attached_link(settings: DeploymentSettings) -> SuperLinkAddress:
    """The SuperLink ``settings`` names, checked enough to fail with one clear line."""
    host, port = split_address(settings.address)
    certificate = Path(settings.certificates).expanduser().resolve() / "ca.crt"
    if not certificate.exists():
        raise LinkError(f"no CA certificate {certificate}: put the SuperLink's ca.crt in the certificates folder")
    secret = Path(settings.superexec_secret).expanduser().resolve() if settings.superexec_secret else None
    if secret is not None and not secret.exists():
        raise LinkError(f"no SuperExec secret file {secret}")
    return SuperLinkAddress(f"{host}:{port}", certificate, secret)


def deployment_transport(config, settings: DeploymentSettings, progress=None):
    """``config`` checked for a deployment, and the transport to its SuperLink (see the module docstring)."""
    attached = None if settings.start_superlink else attached_link(settings)  # its files first: fails at once
    config = check(config, loopback=False)
    scratch = scratch_folder("flower-deployment-")  # removed when the transport closes (or at exit)
    workdir = scratch.path
    started = StartedSuperLink(workdir, settings, config.data_dir, scratch) if settings.start_superlink else None
    try:
        if started is not None:
            if progress is not None:
                progress(f"Starting a SuperLink on {settings.address} (TLS, SuperNode authentication)...")
            started.start()
            link, env = started.link(), started.env("cli-home")
        else:
            link = attached
            env = _attached_cli_env(workdir, link)
            if progress is not None:
                progress(f"Attaching to the SuperLink at {settings.address}...")
        transport = serverapp_transport(config, link, env, PROJECT_ROOT, connection="loopback",
                                        on_close=started.stop if started is not None else scratch.remove)
    except BaseException:
        if started is not None:
            started.stop()
        scratch.remove()
        raise
    transport.backend = "deployment"
    transport.deployment = started
    return config, transport


def deployment_federation(config, settings: DeploymentSettings, dataset=None, store=None, label: str = "",
                          progress=None):
    """``Federation(config)`` whose devices are the SuperNodes of a real deployment (see the module docstring)."""
    config, transport = deployment_transport(config, settings, progress)
    return federation_over(config, transport, dataset, store, label, progress)


def _attached_cli_env(workdir: Path, link: SuperLinkAddress) -> dict[str, str]:
    home = workdir / "cli-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(link.cli_config("loopback"))
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    env.pop("PYTHONPATH", None)
    return env

