"""The app under Flower's simulation runtime (Ray) on this machine: :class:`SimulationDeployment`."""

from __future__ import annotations

from pathlib import Path

from flower_app.loopback import CONNECTION, LocalDeployment
from flower_app.processes import free_port, wait_for_port


class SimulationDeployment(LocalDeployment):
    """The same app under Flower's simulation runtime: a ``--simulation`` SuperLink, no SuperNode processes.

    ``flwr run`` on it runs the ServerApp with an in-memory grid and
    ``num_supernodes`` virtual SuperNodes on Ray (``flwr[simulation]``); node
    ``i`` gets the node config ``partition-id=i num-partitions=N``, so it
    trains on the same partition as in-process device ``i``. The SuperLink
    listens on 127.0.0.1 only (nothing but ``flwr run`` talks to it).
    """

    def __init__(self, workdir: str | Path, num_supernodes: int, cpus_per_node: int = 1, ray_cpus: int = 1,
                 **kwargs):
        super().__init__(workdir, num_supernodes, secure=False, **kwargs)
        self.cpus_per_node = cpus_per_node  # Ray runs ray_cpus // cpus_per_node ClientApp actors at a time
        self.ray_cpus = ray_cpus

    def start(self) -> "SimulationDeployment":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        superlink = self._start("superlink", ["flower-superlink", "--simulation", "--insecure", "--host", "127.0.0.1",
                                              "--port", str(self.port), "--disable-runtime-dependency-installation"],
                                "superlink-home")
        wait_for_port(self.port, self.startup_timeout, superlink)
        self._write_cli_config()
        with (self.workdir / "cli-home" / "config.toml").open("a") as config:
            config.write(
                f"\n[superlink.{CONNECTION}.options]\nnum-supernodes = {self.num_supernodes}\n"
                f"\n[superlink.{CONNECTION}.options.backend.client-resources]\nnum-cpus = {self.cpus_per_node}\n"
                f"\n[superlink.{CONNECTION}.options.backend.init-args]\nnum-cpus = {self.ray_cpus}\n"
            )
        return self
