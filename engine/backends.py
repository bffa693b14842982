"""Where a federation's devices run, by name: the one door from the dashboard to every transport.

``app/`` imports this module, never ``flower_app``: the Flower federation is
imported only when asked for (it needs Flower and starts real processes).
"""

from __future__ import annotations

from engine.config import ConfigError, FederationConfig

BACKENDS = ("in-process", "flower")


def create_federation(config: FederationConfig, backend: str, dataset=None, store=None, label: str = ""):
    """An in-process ``Federation`` or a Flower-backed one for ``config`` (``backend`` in :data:`BACKENDS`).

    Both record their runs in ``store`` (an ``engine.store.RunStore``) when one is given.
    """
    if backend == "in-process":
        from engine.federation import Federation

        return Federation(config, dataset=dataset, store=store, label=label)
    if backend == "flower":
        from flower_app.backend import FlowerFederation

        return FlowerFederation(config, dataset=dataset, store=store, label=label)
    raise ConfigError([f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"])



def backend_problems(config: FederationConfig, backend: str) -> list[str]:
    """Why ``backend`` cannot run ``config`` (empty: it can), for showing in place before anything is built."""
    if backend == "flower":
        from flower_app.backend import unsupported  # no TensorFlow, no processes: cheap enough for every rerun

        return [f"Flower backend: {problem}" for problem in unsupported(config)]
    return []
