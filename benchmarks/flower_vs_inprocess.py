"""Seconds per round on a Flower loopback deployment vs the in-process engine, same workload, interleaved.

The workload (default: 3 devices, 3,000 training samples, the CNN, 3 rounds,
1,000 test samples) runs in-process and on one real Flower deployment on
127.0.0.1 (:class:`flower_app.loopback.LocalDeployment` with its defaults: TLS,
SuperNode authentication, one long-lived ClientApp worker per SuperNode, short
polling), alternately: in-process, Flower, in-process, Flower, ..., in-process
(``--repeats`` Flower runs). Each Flower run is compared with the mean of the
in-process runs right before and after it, so load that changes during the
benchmark (other processes on the machine) affects both sides of each ratio;
the figure is the median of those ratios.

Each run's figure is the median of its rounds after the first (the first round
also pays start-up: data, model building, tracing). The in-process reference
is the engine's default, which trains devices as one vectorised stack
(``stack_width``); ``--stack-width 1`` compares with devices trained one by one,
as each Flower device is. The breakdown says where a Flower round's time goes:
the devices' local training (the longest per round), the ServerApp's central
evaluation, and the rest (transport: messages down and up, polling, record
conversion), with the ClientApp workers' own phases per task (pulling the
message, loading the app, running it, pushing the reply) from their logs. The
load average is printed next to the figures; the last line is one JSON object.

    FL_DATA_DIR=../shared/datasets python -m benchmarks.flower_vs_inprocess
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

TARGET_RATIO = 1.5
TASK_LINE = re.compile(r"task \S+ in ([\d.]+) s \(([^)]*)\)")


def steady(values: list[float]) -> float:
    """Median of the rounds after the first (the first when there is only one)."""
    return statistics.median(values[1:] or values)


def worker_phases(logs: list[str], skip: dict[str, int]) -> dict[str, float]:
    """Median seconds of each ClientApp worker phase over the task lines not yet counted (``skip``: per log)."""
    phases: dict[str, list[float]] = {}
    for index, text in enumerate(logs):
        found = TASK_LINE.findall(text)
        new, skip[str(index)] = found[skip.get(str(index), 0):], len(found)
        for total, marks in new[1:] or new:  # the first task of a run (the query) builds nothing
            phases.setdefault("task", []).append(float(total))
            for mark in marks.split(", "):
                name, _, seconds = mark.partition(" ")
                phases.setdefault(name, []).append(float(seconds))
    return {name: round(statistics.median(values), 3) for name, values in phases.items()}


def flower_once(deployment, run_config: dict, index: int, skip: dict[str, int]) -> dict:
    outcome = deployment.run({**run_config, "results-file": f"rounds-{index}.jsonl"}, timeout=1800)
    if outcome.returncode != 0 or len(outcome.rounds) != run_config["num-server-rounds"]:
        raise RuntimeError(f"Flower run failed (logs in {deployment.workdir}):\n{outcome.output[-3000:]}")
    rounds = outcome.rounds
    training = [max(d["seconds"] for d in r["devices"].values()) for r in rounds]
    logs = [deployment.log(name) for name in sorted(deployment.processes) if name.startswith("clientapp-")]
    return {
        "seconds": [r["seconds"] for r in rounds],
        "accuracy": rounds[-1]["global_accuracy"],
        "device_training": steady(training),
        "evaluation": steady([r["eval_seconds"] for r in rounds]),
        "collect": steady([r["train_seconds"] for r in rounds]),
        "transport": steady([r["train_seconds"] - t for r, t in zip(rounds, training)]),
        "setup": steady([max(d.get("setup_seconds") or 0.0 for d in r["devices"].values()) for r in rounds]),
        "worker_phases": worker_phases(logs, skip),
        "flwr_run_seconds": round(outcome.seconds, 2),
    }


def in_process_once(run_config: dict, devices: int, data_dir: str | None, stack_width: int | None) -> dict:
    from engine.federation import Federation
    from flower_app.config import federation_config

    config = federation_config(run_config, num_devices=devices, data_dir=data_dir)
    if stack_width is not None:
        config = config.with_changes(stack_width=stack_width)
    history = Federation(config).run_to_end().history
    return {"seconds": [r.seconds for r in history], "accuracy": history[-1].global_accuracy,
            "training": steady([r.train_seconds for r in history]),
            "evaluation": steady([r.eval_seconds for r in history])}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def summary(flower: list[dict], in_process: list[dict]) -> dict:
    """Ratios of each Flower run to its two in-process neighbours, and the median phase figures."""
    ratios = []
    for index, run in enumerate(flower):
        neighbours = (steady(in_process[index]["seconds"]) + steady(in_process[index + 1]["seconds"])) / 2
        ratios.append(steady(run["seconds"]) / neighbours)

    def median(runs: list[dict], key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 3)

    return {
        "ratio": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios],
        "flower_seconds_per_round": round(statistics.median(steady(r["seconds"]) for r in flower), 3),
        "in_process_seconds_per_round": round(statistics.median(steady(r["seconds"]) for r in in_process), 3),
        "flower_breakdown": {key: median(flower, key) for key in
                             ("device_training", "evaluation", "transport", "collect", "setup")},
        "in_process_breakdown": {key: median(in_process, key) for key in ("training", "evaluation")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flower_vs_inprocess", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=3000)
    parser.add_argument("--test-samples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="Flower runs (each between two in-process runs)")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--stack-width", type=int, default=None,
                        help="in-process devices trained as one vectorised stack (default: the engine's)")
    parser.add_argument("--isolation", choices=("process", "subprocess"), default="process")
    parser.add_argument("--insecure", action="store_true", help="Flower without TLS and node authentication")
    parser.add_argument("--workdir", default=None, help="default: a new folder under /tmp")
    parser.add_argument("--poll-seconds", type=float, default=None,
                        help="the deployment's polls (SuperNodes, workers, ServerApp; default: LocalDeployment's)")
    args = parser.parse_args(argv)
    if args.devices < 1 or args.rounds < 2 or args.repeats < 1:
        parser.error("--devices and --repeats must be >= 1 and --rounds >= 2 (the first round is the warm-up)")

    from flower_app.loopback import LocalDeployment

    data_dir = os.environ.get("FL_DATA_DIR")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="flower-vs-inprocess-"))
    run_config = {"num-server-rounds": args.rounds, "model": args.model, "train-samples": args.train_samples,
                  "test-samples": args.test_samples, "min-devices": args.devices}
    loads = [load()]
    in_process, flower, skip = [], [], {}
    polls = {} if args.poll_seconds is None else {"poll_seconds": args.poll_seconds}
    with LocalDeployment(workdir / "flower", args.devices, secure=not args.insecure,
                         isolation=args.isolation, **polls) as deployment:
        for _ in range(args.repeats):
            in_process.append(in_process_once(run_config, args.devices, data_dir, args.stack_width))
            loads.append(load())
            flower.append(flower_once(deployment, run_config, len(flower), skip))
            loads.append(load())
        in_process.append(in_process_once(run_config, args.devices, data_dir, args.stack_width))
        loads.append(load())
        leftovers = deployment.stop()
    result = summary(flower, in_process)

    print(f"Workload: {args.devices} devices, {args.train_samples} training samples, {args.model}, "
          f"{args.rounds} rounds; {args.repeats} Flower runs interleaved with {args.repeats + 1} in-process runs")
    print(f"Load average (1 min) during the runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores")
    print(f"In-process: {result['in_process_seconds_per_round']:.2f} s per round (training "
          f"{result['in_process_breakdown']['training']:.2f} s, evaluation {result['in_process_breakdown']['evaluation']:.2f} s)")
    phases = result["flower_breakdown"]
    print(f"Flower ({args.isolation} isolation, {'insecure' if args.insecure else 'TLS + node auth'}): "
          f"{result['flower_seconds_per_round']:.2f} s per round = longest device training "
          f"{phases['device_training']:.2f} s + transport {phases['transport']:.2f} s + evaluation "
          f"{phases['evaluation']:.2f} s (+ bookkeeping); ClientApp set-up {phases['setup']:.3f} s")
    print(f"ClientApp worker per task (median, last run): {flower[-1]['worker_phases']}")
    print(f"Ratio Flower / in-process: {result['ratio']:.2f} (each run: {result['ratios']}; target <= {TARGET_RATIO})")
    print(json.dumps({
        "benchmark": "flower_vs_inprocess", "devices": args.devices, "train_samples": args.train_samples,
        "model": args.model, "rounds": args.rounds, "repeats": args.repeats, "isolation": args.isolation,
        "secure": not args.insecure, "stack_width": args.stack_width, "load_average": loads,
        **result, "target_ratio": TARGET_RATIO, "within_target": result["ratio"] <= TARGET_RATIO,
        "leftover_processes": len(leftovers), "flower": flower, "in_process": in_process,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
