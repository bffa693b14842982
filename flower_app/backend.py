"""The engine's ``Federation`` on Flower: the devices are SuperNodes, this process is the ServerApp.

:func:`flower_federation` returns an ordinary :class:`engine.federation.Federation`
(the same thread, state machine, snapshots, run store and predictor as for
simulated devices) whose transport is a
:class:`flower_app.serverapp_link.LinkTransport`: it starts a SuperLink in
process isolation (``--isolation process``, so the SuperLink launches no
ServerApp of its own), submits the run with ``flwr run`` (the app's FAB, whose
ClientApp the SuperNodes run, and its run config), claims the run's ServerApp
task and runs the engine's rounds through that task's grid.

Where the SuperNodes come from:

* ``loopback`` (:class:`Loopback`): one SuperNode process per device on this
  machine (``flower_app.loopback``), for trying it out; at most
  :data:`MAX_DEVICES`.
* a deployment (``flower_app.deployment``): a SuperLink the dashboard starts
  (TLS and SuperNode authentication on) or attaches to; SuperNodes join from
  other machines.
"""

from __future__ import annotations

from pathlib import Path

from data.sources import is_builtin
from engine.config import ConfigError, FederationConfig
from engine.strategies import STRATEGIES
from flower_app.config import config_run_values, federation_config, run_config_arg, server_settings
from flower_app.loopback import CONNECTION, LocalDeployment
from flower_app.scratch import scratch_folder

MAX_DEVICES = 8  # loopback: one SuperNode and one ClientApp worker process per device on this machine
WAIT_TIMEOUT = 30 * 24 * 3600.0  # the ServerApp key's value: the engine's loop decides how long to wait


def unsupported(config: FederationConfig, loopback: bool = True) -> list[str]:
    """Why ``config`` cannot run on Flower (empty: it can): only what real processes cannot do."""
    problems = []
    if config.secure_aggregation and config.min_devices < 2:
        problems.append("secure aggregation on Flower (its SecAgg+) needs at least 2 devices per round "
                        "(set minimum devices per round to 2 or more)")
    if any(factor != 1.0 for factor in config.slowdowns.values()):
        problems.append("simulated device slowdowns have no meaning for real processes (they take the time they take)")
    if config.strategy in STRATEGIES and STRATEGIES[config.strategy].in_process_only:
        problems.append(f"{config.strategy} runs in-process only: {STRATEGIES[config.strategy].in_process_only}")
    if loopback and config.num_devices > MAX_DEVICES:
        problems.append(
            f"{config.num_devices} devices is too many for Flower on this machine "
            f"(one SuperNode process per device; at most {MAX_DEVICES}; a deployment has no such limit)"
        )
    return problems


KEPT_ON_DEVICES = {
    "fedper": "FedPer's heads (each device's last Dense layer)",
    "ditto": "Ditto's personal models",
}


def kept_on_devices(config: FederationConfig) -> list[str]:
    """What a Flower run of ``config`` keeps on its SuperNodes only, never in the run store, and so starts afresh
    when the run is resumed (in-process it is stored). They never leave the devices: see the README's
    Personalisation section for why they are not sent to the server as SCAFFOLD's c_i are."""
    if config.personalize not in KEPT_ON_DEVICES:
        return []
    return [f"{KEPT_ON_DEVICES[config.personalize]} stay on the SuperNodes and never reach the run store: a resumed "
            "Flower run starts them afresh (the devices' data never leaves them, and neither does what is trained "
            "on it alone)"]


def run_config_for(config: FederationConfig) -> dict[str, object]:
    """The Flower run config for ``config`` (the inverse of ``flower_app.config.federation_config``)."""
    return {**config_run_values(config), "wait-timeout": WAIT_TIMEOUT}


def check(config: FederationConfig, loopback: bool = True) -> FederationConfig:
    """``config`` validated for Flower, or :class:`ConfigError` listing every reason it cannot run there."""
    from engine.models import ModelRegistry  # the models the ServerApp and ClientApps know

    if config.data_dir:  # the Flower processes run in other folders
        config = config.with_changes(data_dir=str(Path(config.data_dir).resolve()))
    if not is_builtin(config.dataset):
        config = config.with_changes(dataset=str(Path(config.dataset).expanduser().resolve()))
    if config.model.endswith(".py"):  # the user's file, on this machine: its SuperNodes get it as model-file
        config = config.with_changes(model=str(Path(config.model).expanduser().resolve()))
    config = config.validate(ModelRegistry().names())
    problems = unsupported(config, loopback)
    if not problems and federation_config(run_config_for(config), config.num_devices, config.data_dir) != config:
        problems.append("this configuration does not map exactly onto Flower run-config keys")
    if problems:
        raise ConfigError([f"Flower backend: {problem}" for problem in problems])
    return config


class Loopback(LocalDeployment):
    """A :class:`LocalDeployment` whose SuperLink runs in process isolation: this process plays the ServerApp.

    Its SuperExec secret (random, owner-only) signs the ServerApp task requests, so
    no other local user can claim the run's ServerApp.
    """

    def superlink_command(self) -> list[str]:
        return super().superlink_command() + ["--isolation", "process",
                                              "--superexec-auth-secret-file", str(self.superexec_secret)]

    @property
    def superexec_secret(self) -> Path:
        return self._runtime_secret("superlink-home")

    def link(self):
        from flower_app.serverapp_link import SuperLinkAddress

        return SuperLinkAddress(f"127.0.0.1:{self.port}", self.certificates / "ca.crt" if self.secure else None,
                                self.superexec_secret)


def serverapp_transport(config: FederationConfig, link, submit_env: dict[str, str], cwd: Path,
                        connection: str = CONNECTION, on_close=None):
    """Submit ``config``'s run to the SuperLink at ``link``, claim its ServerApp task: the transport for it.

    ``on_close`` (e.g. stopping the deployment this process started) is called when the transport closes.
    """
    from flower_app.polling import poll_seconds
    from flower_app.serverapp_link import LinkTransport, ServerAppTask, acquire_token, submit_run

    values = run_config_for(config)
    command = ["flwr", "run", ".", connection, "--run-config", run_config_arg(values)]
    run_id = submit_run(command, cwd, submit_env)
    task = ServerAppTask(link, acquire_token(link, run_id))
    transport = LinkTransport(task, server_settings(values), poll_seconds(submit_env),
                              on_close=on_close)
    transport.training_note = " ".join([LinkTransport.training_note, *(f"{note[:1].upper()}{note[1:]}."
                                                                       for note in kept_on_devices(config))])
    transport.flower_run_id = run_id
    return transport


def loopback_transport(config: FederationConfig, workdir=None, progress=None):
    """``config`` checked for Flower, and the transport to a loopback deployment for it: a SuperLink and one
    SuperNode per device here, started now (stopped when the transport closes).

    ``workdir``: the deployment's folder (kept); default a scratch folder, removed when it stops."""
    config = check(config, loopback=True)
    scratch = None if workdir else scratch_folder("flower-federation-")  # removed when the deployment stops
    workdir = Path(workdir or scratch.path).resolve()
    if progress is not None:
        progress(f"Starting a Flower SuperLink and {config.num_devices} SuperNodes on 127.0.0.1...")
    model_file = {"model-file": config.model} if config.model.endswith(".py") else {}
    deployment = Loopback(workdir, config.num_devices, data_dir=config.data_dir, output_dir=workdir, scratch=scratch,
                          node_configs=[{"partition-id": i, "num-partitions": config.num_devices, **model_file}
                                        for i in range(config.num_devices)])
    try:
        deployment.start()
        transport = serverapp_transport(config, deployment.link(), deployment.env("cli-home"),
                                        deployment.project_root, on_close=deployment.stop)
    except BaseException:
        deployment.stop()
        raise
    transport.deployment = deployment
    return config, transport


def flower_federation(config: FederationConfig, dataset=None, store=None, label: str = "", workdir=None,
                      progress=None):
    """``Federation(config)`` on a loopback Flower deployment: a SuperLink and one SuperNode per device here."""
    from engine.backends import federation_over

    config, transport = loopback_transport(config, workdir, progress)
    return federation_over(config, transport, dataset, store, label, progress)
