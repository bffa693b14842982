"""Command line: ``python -m engine run ...`` trains a federation headless and prints each round."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence, TextIO

from data.errors import DataError, DatasetUnavailableError
from data.sources import load_source
from engine.backends import BackendChoice, DeploymentSettings
from engine.cli_options import DefaultsHelpFormatter, OneLineParser, add_setting_options, setting_values
from engine.config import ConfigError, FederationConfig
from engine.data_fit import data_problem
from engine.errors import UserError, one_line
from engine.export_paths import FORMATS
from engine.model_defaults import GENERAL_DEFAULTS, ModelError, TrainingDefaults, describe_defaults, training_defaults
from engine.native_logs import filtered_stderr
from engine.results import RunStatus
from engine.settings import declared_settings
from engine.cli_output import (REGRESSION_HEADER, TABLE_HEADER, progress_to_stderr, round_json, round_row,
                               summary_json)
from engine.cli_store import delete_command, export_command, metrics_command, runs_command, stored_dataset
from engine.store import RunStore
from engine.strategies import STRATEGIES

DEFAULTS = FederationConfig()
POLL_SECONDS = 0.1
EXPORT_FORMATS = FORMATS  # engine.export's, without importing TensorFlow


def default_runs_dir() -> str:
    return os.environ.get("FL_RUNS_DIR", "runs")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def rounds_value(text: str) -> int | None:
    """A positive round count, or 0 / 'inf' to run until interrupted."""
    if text in ("0", "inf", "unlimited"):
        return None
    return positive_int(text)


def strategy_help() -> str:
    lines = []
    for name, cls in STRATEGIES.items():
        params = ", ".join(f"{key}={value:g}" for key, value in cls.parameters().items()) or "no parameters"
        lines.append(f"{name} ({params})")
    return "aggregation strategy: " + "; ".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="fl-watch" if os.path.basename(sys.argv[0]) == "fl-watch" else "python -m engine",
        description="Run federated learning on simulated devices, headless.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="train a federation and print one line per round",
        description="Train a federation and print one line per round: simulated devices here (the default), "
                    "or Flower SuperNodes (--backend flower: on this machine; --backend deployment: a SuperLink "
                    "that SuperNodes on other machines join).",
        epilog="Local training defaults: each device trains with a fresh Adam optimizer (lr 0.002) every "
               "round, batch 32, 1 local epoch. With them the CNN on 10 IID devices reaches about 0.88 "
               "test accuracy on Fashion-MNIST after 5 rounds. Data: --data-dir or $FL_DATA_DIR, "
               "otherwise Keras downloads the data set on first use; or --dataset PATH for your own data. "
               + describe_defaults() + " A --model FILE.py is imported and run: only pass a local file you trust.",
        formatter_class=DefaultsHelpFormatter,
    )
    run.set_defaults(command_parser=run)
    add_setting_options(run, FederationConfig, help_overrides={"strategy": strategy_help(), **model_default_help()})
    run.set_defaults(**{name: None for name in (*MODEL_DEFAULTED, "num_devices")})  # None: chosen after loading
    add_backend_options(run)

    output = run.add_argument_group("output")
    output.add_argument("--config", metavar="FILE", default=None,
                        help="read the settings from a TOML file (every FederationConfig field by name, e.g. "
                             "num_devices = 4); options given here override it")
    add_output_options(output)
    output.add_argument("--label", default="", help="a name for the run in the run list")
    output.add_argument("--no-save", action="store_true", help="do not record the run in the runs directory")

    resume = commands.add_parser(
        "resume", help="continue a stored run from its last completed round",
        description="Continue a stored run from its last completed round, same devices and partition.",
        formatter_class=DefaultsHelpFormatter,
    )
    resume.set_defaults(command_parser=resume)
    resume.add_argument("run_id", metavar="RUN_ID")
    resume.add_argument("--rounds", type=rounds_value, default=5, help="rounds to add (0: until interrupted)")
    resume.add_argument("--data-dir", default=None, help="folder with the IDX .gz files (default: $FL_DATA_DIR)")
    add_output_options(resume)
    add_backend_options(resume)

    runs = commands.add_parser("runs", help="list stored runs")
    runs.set_defaults(command_parser=runs)
    add_runs_dir(runs)
    runs.add_argument("--json", action="store_true", help="one JSON object per run")
    runs.add_argument("--show", metavar="RUN_ID", default=None,
                      help="print a run's full configuration as TOML, which run --config accepts")

    metrics = commands.add_parser("metrics", help="print a run's per-round metrics as CSV or JSON")
    metrics.set_defaults(command_parser=metrics)
    metrics.add_argument("run_id", metavar="RUN_ID")
    metrics.add_argument("--format", choices=("csv", "json"), default="csv")
    add_runs_dir(metrics)

    export = commands.add_parser(
        "export", help="export a run's global model (.keras, SavedModel, TFLite)",
        description="Export the global model of a stored run for deployment.",
        formatter_class=DefaultsHelpFormatter,
    )
    export.set_defaults(command_parser=export)
    export.add_argument("run_id", metavar="RUN_ID")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="keras",
                        help="keras file, TensorFlow SavedModel, TFLite (float) or TFLite with int8 quantisation")
    export.add_argument("--round", type=positive_int, default=None,
                        help="which round's model (default: the last completed round)")
    export.add_argument("--output", default=None, help="destination path (default: inside the run's folder)")
    export.add_argument("--data-dir", default=None, help="data folder, for the int8 representative images")
    add_runs_dir(export)

    sweep = commands.add_parser(
        "sweep", help="run a grid of configurations from a TOML file and compare them",
        description="Run every combination of a sweep file's [grid] on top of its [base] settings, one after "
                    "another, record each run, and print a comparison table (final and best accuracy, rounds "
                    "to the target accuracy, bytes sent, epsilon).",
    )
    sweep.set_defaults(command_parser=sweep)
    sweep.add_argument("sweep_file", metavar="SWEEP_TOML")
    sweep.add_argument("--no-save", action="store_true", help="do not record the runs in the runs directory")
    add_output_options(sweep)

    delete = commands.add_parser("delete", help="delete a stored run, or all of them")
    delete.set_defaults(command_parser=delete)
    delete.add_argument("run_id", metavar="RUN_ID", nargs="?")
    delete.add_argument("--all", action="store_true", help="delete every run")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_runs_dir(delete)
    return parser


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and where a deployment's SuperLink is: generated from their declared settings."""
    groups: dict = {}
    add_setting_options(parser, BackendChoice, groups=groups)
    add_setting_options(parser, DeploymentSettings, groups=groups)


def deployment_from_args(args: argparse.Namespace) -> DeploymentSettings | None:
    """The deployment's SuperLink settings, for ``--backend deployment`` (None for the other backends)."""
    return DeploymentSettings(**setting_values(args, DeploymentSettings)) if args.backend == "deployment" else None


def check_backend(config: FederationConfig, args: argparse.Namespace) -> None:
    """Raise ``ConfigError`` (exit 2, one line) when ``--backend`` cannot run ``config``, before anything starts;
    print what it runs differently (``note: ...`` on stderr)."""
    from engine.backends import backend_notes, backend_problems

    problems = backend_problems(config, args.backend)
    if problems:
        raise ConfigError(problems)
    for note in backend_notes(config, args.backend):
        print(f"note: {note}", file=sys.stderr, flush=True)


def add_runs_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default=default_runs_dir(), help="where runs are stored ($FL_RUNS_DIR)")


def add_output_options(group) -> None:
    group.add_argument("--json", action="store_true", help="print one JSON object per round and a summary line")
    add_runs_dir(group)


MODEL_DEFAULTED = ("optimizer", "learning_rate", "momentum")
"""Options that, when not given, take the model's and task's own defaults (engine.model_defaults)."""
MODEL_DEFAULT_HELP = {
    "optimizer": f" (default: {GENERAL_DEFAULTS.optimizer}, or the model's own, see below)",
    "learning_rate": f" (default: {GENERAL_DEFAULTS.learning_rate:g}, or the model's own)",
    "momentum": f" (default: {GENERAL_DEFAULTS.momentum:g}, or the model's own)",
    "num_devices": f" (default: {DEFAULTS.num_devices}, or the data's own with --partition natural)",
}
"""What these options' help adds to their declared help: where their default comes from."""


def model_default_help() -> dict[str, str]:
    declared = {f.name: spec.help for f, spec in declared_settings(FederationConfig)}
    return {name: declared[name] + suffix for name, suffix in MODEL_DEFAULT_HELP.items()}


def config_from_args(
    args: argparse.Namespace, defaults: TrainingDefaults = GENERAL_DEFAULTS, devices: int | None = None
) -> FederationConfig:
    """The ``run`` options as a configuration (not validated: see ``FederationConfig.problems``).

    Training options not given take ``defaults`` (the model's); ``--devices`` not given, the data's own
    device count (``devices``) or the default."""
    values = setting_values(args, FederationConfig)
    for name in MODEL_DEFAULTED:
        if values[name] is None:
            values[name] = getattr(defaults, name)
    if values["num_devices"] is None:
        values["num_devices"] = devices or DEFAULTS.num_devices
    return FederationConfig(**values)


def follow(federation, as_json: bool, out: TextIO) -> int:
    """Start ``federation``, print each round as it completes, and a summary at the end."""
    printed = len(federation.snapshot().history)
    federation.start()  # records a new run, so its id is known from here on
    if not as_json:
        if federation.run_id:
            print(f"run {federation.run_id}", file=out, flush=True)
        print(federation.training_note, file=sys.stderr, flush=True)
        regression = federation.dataset.task == "regression"
        print(REGRESSION_HEADER if regression else TABLE_HEADER, file=out, flush=True)
    last_message = ""
    save_problems: tuple[str, ...] = ()
    try:
        while True:
            snapshot = federation.snapshot()
            for result in snapshot.history[printed:]:
                print(json.dumps(round_json(result)) if as_json else round_row(result), file=out, flush=True)
            printed = len(snapshot.history)
            for problem in snapshot.save_problems:
                if problem not in save_problems:
                    print(f"warning: {problem}", file=sys.stderr, flush=True)
            save_problems = snapshot.save_problems
            if snapshot.status is RunStatus.WAITING and snapshot.message != last_message:
                print(snapshot.message, file=sys.stderr, flush=True)
            last_message = snapshot.message
            if snapshot.status in (RunStatus.FINISHED, RunStatus.STOPPED, RunStatus.FAILED):
                break
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        federation.stop()
        snapshot = federation.snapshot()
    finally:
        federation.close()
    if as_json:
        print(json.dumps({**summary_json(snapshot), "run_id": federation.run_id}), file=out, flush=True)
    else:
        print(snapshot.message, file=out, flush=True)
    return 1 if snapshot.status is RunStatus.FAILED else 0


def run_command(args: argparse.Namespace, out: TextIO) -> int:
    store = None if args.no_save else RunStore(args.runs_dir)  # a bad runs folder fails before TensorFlow loads
    from engine.backends import create_federation  # deferred: TensorFlow import is slow, --help should not be

    draft = config_from_args(args)
    dataset = load_source(draft.dataset, draft.data_dir, draft.source_options, progress_to_stderr)
    config = config_from_args(args, training_defaults(draft.model, dataset.task), len(dataset.group_names) or None)
    problem = config.problems() or ([data_problem(dataset, config)] if data_problem(dataset, config) else [])
    if problem:
        raise DataError("; ".join(problem))
    check_backend(config, args)
    federation = create_federation(config, args.backend, dataset=dataset, store=store, label=args.label,
                                   deployment=deployment_from_args(args), progress=progress_to_stderr)
    return follow(federation, args.json, out)


def resume_command(args: argparse.Namespace, out: TextIO) -> int:
    store = RunStore(args.runs_dir)
    config = store.load_config(args.run_id)
    check_backend(config, args)
    from engine.backends import reopen_federation

    dataset = stored_dataset(config, args.data_dir)
    federation = reopen_federation(store, args.run_id, args.rounds, args.backend, dataset=dataset,
                                   deployment=deployment_from_args(args), progress=progress_to_stderr)
    return follow(federation, args.json, out)


def sweep_command(args: argparse.Namespace, out: TextIO) -> int:
    from engine.sweep import load_sweep, run_sweep, table

    sweep = load_sweep(args.sweep_file)
    names = [name for name, _ in sweep.points[0].values]
    print(f"{len(sweep.points)} runs: {', '.join(p.label[len('sweep '):] for p in sweep.points)}", file=sys.stderr)

    def on_row(row: dict) -> None:
        if args.json:
            print(json.dumps(row), file=out, flush=True)
        else:
            print(f"run {row['run_id'] or '-'}: final accuracy {row['final_accuracy']}", file=sys.stderr, flush=True)

    rows = run_sweep(sweep, None if args.no_save else RunStore(args.runs_dir), on_row, progress_to_stderr)
    if not args.json:
        print(table(rows, names, sweep.target), file=out)
    return 0


COMMANDS = {
    "run": run_command,
    "resume": resume_command,
    "runs": runs_command,
    "metrics": metrics_command,
    "export": export_command,
    "delete": delete_command,
    "sweep": sweep_command,
}


def with_config_file(parser: argparse.ArgumentParser, args: argparse.Namespace, argv) -> argparse.Namespace:
    """Parse again with the ``--config`` file's values as the defaults, so options on the command line win."""
    from engine.experiments import load_config, read_toml

    config = load_config(args.config)  # checks every value the file sets
    named = set(read_toml(args.config))  # only those: the rest keep the CLI's own (model-dependent) defaults
    # generated options have the field's name as their destination; mappings collect repeated KEY=VALUE items
    defaults = {name: [value] if isinstance(value, dict) else value
                for name, value in config.to_dict().items() if name in named}
    args.command_parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as python -m engine; also for the fl-watch script
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # point at the sub-command's --help, where the options are
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "sweep":
        from engine.sweep import load_sweep

        try:
            load_sweep(args.sweep_file)  # every point checked before anything runs
        except ConfigError as error:
            args.command_parser.error(str(error))
    if args.command == "run" and args.config:
        try:
            args = with_config_file(parser, args, argv)
        except ConfigError as error:
            args.command_parser.error(str(error))
    if args.command == "run":
        problems = config_from_args(args).problems()
        if problems:
            args.command_parser.error("; ".join(problems))
    if args.command in ("run", "resume") and args.backend == "deployment" and deployment_from_args(args).problems():
        args.command_parser.error("; ".join(deployment_from_args(args).problems()))
    try:
        with filtered_stderr(enabled=not os.environ.get("FL_DEBUG")):
            return COMMANDS[args.command](args, out)
    except (DataError, ModelError) as error:  # the data or the model does not fit the settings: a usage error
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1 if isinstance(error, DatasetUnavailableError) else 2
    except ConfigError as error:
        args.command_parser.error(str(error))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # every runtime error ends here, as one line; FL_DEBUG=1 shows the traceback
        if os.environ.get("FL_DEBUG"):
            raise
        expected = isinstance(error, (UserError, DatasetUnavailableError, OSError))
        hint = "" if expected else " (unexpected: run with FL_DEBUG=1 for the traceback)"
        print(f"error: {one_line(error)}{hint}", file=sys.stderr)
        return 1
    return 2
