"""The run-store commands of the command line: ``runs``, ``metrics``, ``export`` and ``delete``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import TextIO

from data.sources import load_source
from data.spec import Preprocessing
from engine.cli_output import progress_to_stderr
from engine.config import FederationConfig
from engine.export_paths import check_destination, default_filename
from engine.run_files import PREPROCESSING_FILE
from engine.store import RunStore


def stored_dataset(config: FederationConfig, data_dir: str | None):
    """The data set a stored run trained on, read the same way again."""
    return load_source(config.dataset, data_dir or config.data_dir, config.source_options, progress_to_stderr)


def runs_command(args: argparse.Namespace, out: TextIO) -> int:
    if args.show:
        from engine.experiments import config_to_toml

        config = RunStore(args.runs_dir).load_config(args.show)
        header = f"run {args.show}; run it again with: python -m engine run --config FILE"
        print(config_to_toml(config, header), file=out, end="")
        return 0
    runs = RunStore(args.runs_dir).list_runs()
    if args.json:
        for run in runs:
            print(json.dumps(asdict(run)), file=out)
        return 0
    print(f"{'run id':<23}  {'created':<25}  {'data set':<13}  {'strategy':<13}  {'partition':<9}  "
          f"{'rounds':>6}  {'final':>6}  {'best':>6}  status", file=out)
    for run in runs:
        final = f"{run.final_accuracy:.4f}" if run.final_accuracy is not None else "-"
        best = f"{run.best_accuracy:.4f}" if run.best_accuracy is not None else "-"
        print(f"{run.run_id:<23}  {run.created:<25}  {run.dataset:<13}  {run.strategy:<13}  {run.partition:<9}  "
              f"{run.rounds:>6}  {final:>6}  {best:>6}  {run.status}", file=out)
    if not runs:
        print(f"no runs in {args.runs_dir}", file=out)
    return 0


def metrics_command(args: argparse.Namespace, out: TextIO) -> int:
    print(RunStore(args.runs_dir).export_metrics(args.run_id, args.format), file=out, end="")
    return 0


def export_command(args: argparse.Namespace, out: TextIO) -> int:
    store = RunStore(args.runs_dir)
    config = store.load_config(args.run_id)
    if args.output:
        check_destination(args.format, args.output)  # before loading anything
    checkpoint = store.load_checkpoint(args.run_id, args.round)
    if checkpoint.note:
        print(f"warning: {checkpoint.note}", file=sys.stderr)
    name = f"round-{checkpoint.round:05d}-{default_filename(config.model, args.format)}"
    destination = args.output or str(store.run_dir(args.run_id) / "export" / name)
    spec_file = store.run_dir(args.run_id) / PREPROCESSING_FILE
    spec = Preprocessing.from_json(spec_file.read_text()) if spec_file.is_file() else None
    from engine.export import export_model  # deferred: TensorFlow is slow to import, needed only from here

    representative = None
    if args.format == "tflite-int8":
        dataset = stored_dataset(config, args.data_dir)
        representative = dataset.x_train[:200].astype("float32") / (255.0 if dataset.is_image else 1.0)
    path = export_model(config.model, checkpoint.weights, args.format, destination, representative,
                        preprocessing=spec)
    print(path, file=out)
    return 0


def delete_command(args: argparse.Namespace, out: TextIO) -> int:
    store = RunStore(args.runs_dir)
    if not args.all and not args.run_id:
        args.command_parser.error("name a RUN_ID or pass --all")
    what = "every run" if args.all else f"run {args.run_id}"
    if not args.all:
        store.summary(args.run_id)
    if not args.yes:
        if not sys.stdin.isatty():
            args.command_parser.error(f"deleting {what} needs confirmation: pass --yes")
        if input(f"Delete {what} in {args.runs_dir}? [y/N] ").strip().lower() != "y":
            print("nothing deleted", file=out)
            return 0
    if not args.all:
        store.delete_run(args.run_id)  # refused while the run trains
        print(f"deleted {what}", file=out)
        return 0
    kept = store.delete_all()
    for run_id in kept:
        print(f"kept run {run_id}: it is being trained", file=sys.stderr)
    print("deleted every run" + (f" but {len(kept)}" if kept else ""), file=out)
    return 1 if kept else 0
