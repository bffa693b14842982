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

from engine.config import ConfigError, FederationConfig

BACKENDS = ("in-process", "flower", "deployment")


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

    start_superlink: bool = True
    address: str = "0.0.0.0:9093"
    certificates: str = "~/.fl-watch/deployment"
    supernode_keys: int = 3
    superexec_secret: str = ""

    def problems(self) -> list[str]:
        host, _, port = self.address.strip().rpartition(":")
        found = []
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            found.append(f"the SuperLink address is host:port, e.g. 0.0.0.0:9093; got {self.address!r}")
        if not self.certificates.strip():
            found.append("the certificates folder is empty: name a folder (made if missing)")
        if not 0 <= self.supernode_keys <= 1000:
            found.append(f"SuperNode keys must be between 0 and 1000; got {self.supernode_keys}")
        return found


def create_federation(config: FederationConfig, backend: str, dataset=None, store=None, label: str = "",
                      deployment: DeploymentSettings | None = None):
    """``engine.federation.Federation`` for ``config``, its devices simulated here or Flower SuperNodes.

    ``backend`` (in :data:`BACKENDS`) picks the transport; the federation, its
    controls, snapshots, run store (``store``) and predictor are the same class.
    ``deployment`` says where the ``deployment`` backend's SuperLink is (default: started here).
    """
    if backend == "in-process":
        from engine.federation import Federation

        return Federation(config, dataset=dataset, store=store, label=label)
    if backend == "flower":
        from flower_app.backend import flower_federation

        return flower_federation(config, dataset=dataset, store=store, label=label)
    if backend == "deployment":
        settings = deployment or DeploymentSettings()
        if settings.problems():
            raise ConfigError(settings.problems())
        from flower_app.deployment import deployment_federation

        return deployment_federation(config, settings, dataset=dataset, store=store, label=label)
    raise ConfigError([f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"])


def backend_problems(config: FederationConfig, backend: str) -> list[str]:
    """Why ``backend`` cannot run ``config`` (empty: it can), for showing in place before anything is built."""
    if backend in ("flower", "deployment"):
        from flower_app.backend import unsupported  # no TensorFlow, no processes: cheap enough for every rerun

        return [f"Flower backend: {problem}" for problem in unsupported(config, loopback=backend == "flower")]
    return []
