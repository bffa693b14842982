"""Where a federation's devices run, by name: the one door from the dashboard to every transport.

``app/`` imports this module, never ``flower_app``: Flower is imported only
when asked for (it needs Flower and starts or reaches real processes). Every
backend returns the same ``engine.federation.Federation``; only its transport differs:

* ``in-process``: simulated devices on this machine's worker pool;
* ``flower``: a Flower SuperLink and one SuperNode process per device on this
  machine (loopback: for trying Flower out; a few devices);
* ``deployment``: a Flower SuperLink this process starts (or attaches to) and
  SuperNodes that join from other machines (:class:`DeploymentSettings`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import ConfigError, FederationConfig
from engine.settings import Bounds, field_problems, setting

BACKENDS = ("in-process", "flower", "deployment")
GROUP = "where devices run"  # the CLI's argument group of the settings below (engine.cli_options)


@dataclass(frozen=True)
class BackendChoice:
    """Which transport a federation's devices use: not training configuration, so not a ``FederationConfig`` field."""

    backend: str = setting(
        "in-process", choices=BACKENDS, group=GROUP, label="Where devices run",
        help="in-process: simulated devices here; flower: a local Flower SuperLink and one SuperNode process per "
             "device (loopback, a few devices); deployment: a SuperLink with TLS and SuperNode authentication "
             "(started here, or attached to with --no-start-superlink) that SuperNodes join from other machines",
    )


@dataclass(frozen=True)
class DeploymentSettings:
    """Where a real deployment's SuperLink is: not training configuration, so not a ``FederationConfig`` field.

    ``start_superlink``: start one on ``address`` (the address it listens on; its
    Control and Runtime APIs answer this machine only), with TLS and SuperNode
    authentication, certificates and ``supernode_keys`` SuperNode key pairs in
    ``certificates`` (made there if it holds no CA yet). Otherwise attach to the
    SuperLink at ``address`` (on this machine or tunnelled to it, started with
    ``--isolation process``), trusting ``certificates``/ca.crt, signing with its
    ``superexec_secret`` file if it has one.
    """

    start_superlink: bool = setting(
        True, group=GROUP, label="Start a SuperLink here",
        help="--backend deployment: start a SuperLink on --superlink-address (TLS, SuperNode authentication); "
             "--no-start-superlink attaches to one already running there (with --isolation process)",
    )
    address: str = setting(
        "0.0.0.0:9093", group=GROUP, label="SuperLink address", flag="--superlink-address",
        help="--backend deployment: host:port the SuperLink listens on (0.0.0.0: every interface), or the one "
             "to attach to",
    )
    certificates: str = setting(
        "~/.fl-watch/deployment", group=GROUP, label="Certificates folder",
        help="--backend deployment: ca.crt (copy it to each device), the SuperLink's certificate and the "
             "SuperNode keys (supernode-N: one per device); made with scripts/make_certificates.sh if it has no CA",
    )
    supernode_keys: int = setting(
        3, group=GROUP, label="SuperNode keys", bounds=Bounds(0, 1000, high_inclusive=True),
        help="--backend deployment: SuperNode key pairs made with a new CA; every supernode-*.pub in the "
             "certificates folder is registered",
    )
    superexec_secret: str = setting(
        "", group=GROUP, label="SuperExec secret file",
        help="--backend deployment --no-start-superlink: the SuperLink's --superexec-auth-secret-file, if it "
             "was started with one",
    )

    def problems(self) -> list[str]:
        host, _, port = self.address.strip().rpartition(":")
        found = list(field_problems(self).values())  # each field's declared type and bounds
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            found.append(f"the SuperLink address is host:port, e.g. 0.0.0.0:9093; got {self.address!r}")
        if not self.certificates.strip():
            found.append("the certificates folder is empty: name a folder (made if missing)")
        if not self.start_superlink and self.certificates.strip():  # attach: its CA must be here already
            certificate = Path(self.certificates).expanduser() / "ca.crt"
            if not certificate.is_file():
                found.append(f"no CA certificate {certificate}: put the SuperLink's ca.crt in the certificates folder")
            secret = self.superexec_secret.strip()
            if secret and not Path(secret).expanduser().is_file():
                found.append(f"no SuperExec secret file {secret}")
        return found


def create_federation(config: FederationConfig, backend: str, dataset=None, store=None, label: str = "",
                      deployment: DeploymentSettings | None = None, progress=None):
    """``engine.federation.Federation`` for ``config``, its devices simulated here or Flower SuperNodes.

    ``backend`` (in :data:`BACKENDS`) picks the transport; the federation, its
    controls, snapshots, run store (``store``) and predictor are the same class.
    ``deployment`` says where the ``deployment`` backend's SuperLink is (default: started here);
    ``progress`` is told each step of the set-up (one line each).
    """
    if backend == "in-process":
        from engine.federation import Federation

        return Federation(config, dataset=dataset, store=store, label=label, progress=progress)
    config, transport = remote_transport(config, backend, deployment, progress)
    return federation_over(config, transport, dataset, store, label, progress)


def reopen_federation(store, run_id: str, more_rounds: int | None, backend: str, dataset=None,
                      deployment: DeploymentSettings | None = None, progress=None):
    """A stored run reopened (``engine.federation.Federation.reopen``) with its devices on ``backend``."""
    from engine.federation import Federation

    def transport(config: FederationConfig):
        return remote_transport(config, backend, deployment, progress)

    return Federation.reopen(store, run_id, more_rounds, dataset=dataset, progress=progress,
                             transport=None if backend == "in-process" else transport)


def remote_transport(config: FederationConfig, backend: str, deployment: DeploymentSettings | None = None,
                     progress=None):
    """``config`` checked for a Flower ``backend``, and the transport to its SuperNodes (processes started or
    reached now; they end when the transport closes)."""
    if backend == "flower":
        from flower_app.backend import loopback_transport

        return loopback_transport(config, progress=progress)
    if backend == "deployment":
        settings = deployment or DeploymentSettings()
        if settings.problems():
            raise ConfigError(settings.problems())
        from flower_app.deployment import deployment_transport

        return deployment_transport(config, settings, progress)
    raise ConfigError([f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"])


def federation_over(config: FederationConfig, transport, dataset=None, store=None, label: str = "", progress=None):
    """``Federation(config)`` over a remote ``transport``, which is closed (as failed) if that cannot be built."""
    from engine.federation import Federation

    try:
        return Federation(config, dataset, store=store, label=label, transport=transport, progress=progress)
    except BaseException as error:
        transport.close("failed", str(error))
        raise


def backend_notes(config: FederationConfig, backend: str) -> list[str]:
    """What ``backend`` runs differently from in-process for ``config`` (not a problem: it runs), said in place."""
    if backend in ("flower", "deployment"):
        from flower_app.backend import kept_on_devices

        return [f"On Flower, {note}." for note in kept_on_devices(config)]
    return []


def backend_problems(config: FederationConfig, backend: str) -> list[str]:
    """Why ``backend`` cannot run ``config`` (empty: it can), for showing in place before anything is built."""
    if backend in ("flower", "deployment"):
        from flower_app.backend import unsupported  # no TensorFlow, no processes: cheap enough for every rerun

        return [f"Flower backend: {problem}" for problem in unsupported(config, loopback=backend == "flower")]
    return []
