"""Seconds per round on a Flower loopback deployment vs the in-process engine, same workload, one run.

The workload (default: 3 devices, 3,000 training samples, the CNN, 4 rounds,
1,000 test samples) runs in-process, then on a real Flower deployment on
127.0.0.1 (:class:`flower_app.loopback.LocalDeployment` with its defaults: TLS,
SuperNode authentication, one long-lived ClientApp worker per SuperNode, short
polling), then in-process again; the reference is the mean of the two
in-process runs, so load that changes during the run affects both sides.
``--isolation subprocess`` measures Flower's default instead (a new ClientApp
process, with its TensorFlow import, per message).

Each side's figure is the median of its rounds after the first (the first
round also pays start-up: TensorFlow import, data, model building, tracing),
and the first rounds are reported separately. The ClientApp's own figures
(``setup_seconds``: import, data and model in the ClientApp process;
``seconds``: local training) show where Flower's time goes. The last line is
one JSON object.

    FL_DATA_DIR=../shared/datasets python -m benchmarks.flower_vs_inprocess
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.5


def steady(seconds: list[float]) -> float:
    """Median seconds per round after the first (the first when there is only one)."""
    return statistics.median(seconds[1:] or seconds)


def flower_rounds(run_config: dict, devices: int, isolation: str, insecure: bool, workdir: Path) -> dict:
    from flower_app.loopback import LocalDeployment

    started = time.perf_counter()
    with LocalDeployment(workdir, devices, secure=not insecure, isolation=isolation) as deployment:
        ready = time.perf_counter()
        outcome = deployment.run({**run_config, "results-file": "rounds.jsonl"}, timeout=1800)
        leftovers = deployment.stop()
    if outcome.returncode != 0 or len(outcome.rounds) != run_config["num-server-rounds"]:
        raise RuntimeError(f"Flower run failed (logs in {workdir}):\n{outcome.output[-3000:]}")
    rounds = outcome.rounds
    per_device = [d for r in rounds[1:] or rounds for d in r["devices"].values()]
    return {
        "seconds": [r["seconds"] for r in rounds],
        "accuracy": rounds[-1]["global_accuracy"],
        "deployment_start_seconds": ready - started,
        "flwr_run_seconds": outcome.seconds,
        "first_round_setup_seconds": max(d.get("setup_seconds") or 0.0 for d in rounds[0]["devices"].values()),
        "steady_setup_seconds": statistics.median(d.get("setup_seconds") or 0.0 for d in per_device),
        "steady_device_train_seconds": statistics.median(d["seconds"] for d in per_device),
        "leftover_processes": len(leftovers),
    }


def in_process(run_config: dict, devices: int, data_dir: str | None) -> dict:
    from flower_app.loopback import in_process_rounds

    rounds = in_process_rounds(run_config, devices, data_dir)
    return {"seconds": [r["seconds"] for r in rounds], "accuracy": rounds[-1]["global_accuracy"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flower_vs_inprocess", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=3000)
    parser.add_argument("--test-samples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--isolation", choices=("process", "subprocess"), default="process")
    parser.add_argument("--insecure", action="store_true", help="Flower without TLS and node authentication")
    parser.add_argument("--workdir", default=None, help="default: a new folder under /tmp")
    args = parser.parse_args(argv)
    if args.devices < 1 or args.rounds < 2:
        parser.error("--devices must be >= 1 and --rounds >= 2 (the first round is the warm-up)")

    data_dir = os.environ.get("FL_DATA_DIR")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="flower-vs-inprocess-"))
    run_config = {"num-server-rounds": args.rounds, "model": args.model, "train-samples": args.train_samples,
                  "test-samples": args.test_samples, "min-devices": args.devices}
    before = in_process(run_config, args.devices, data_dir)
    flower = flower_rounds(run_config, args.devices, args.isolation, args.insecure, workdir / "flower")
    after = in_process(run_config, args.devices, data_dir)

    reference = (steady(before["seconds"]) + steady(after["seconds"])) / 2
    flower_steady = steady(flower["seconds"])
    ratio = flower_steady / reference
    print(f"Workload: {args.devices} devices, {args.train_samples} training samples, {args.model}, "
          f"{args.rounds} rounds")
    print(f"In-process: {steady(before['seconds']):.2f} s / {steady(after['seconds']):.2f} s per round "
          f"(before / after; first rounds {before['seconds'][0]:.2f} / {after['seconds'][0]:.2f} s)")
    print(f"Flower ({args.isolation} isolation, {'insecure' if args.insecure else 'TLS + node auth'}): "
          f"{flower_steady:.2f} s per round (first round {flower['seconds'][0]:.2f} s, ClientApp set-up "
          f"{flower['first_round_setup_seconds']:.2f} s then {flower['steady_setup_seconds']:.3f} s, local training "
          f"{flower['steady_device_train_seconds']:.2f} s per device; deployment start "
          f"{flower['deployment_start_seconds']:.1f} s)")
    print(f"Ratio Flower / in-process: {ratio:.2f} (target <= {TARGET_RATIO})")
    print(json.dumps({
        "benchmark": "flower_vs_inprocess", "devices": args.devices, "train_samples": args.train_samples,
        "model": args.model, "rounds": args.rounds, "isolation": args.isolation, "secure": not args.insecure,
        "flower_seconds_per_round": round(flower_steady, 3),
        "in_process_seconds_per_round": round(reference, 3),
        "ratio": round(ratio, 3), "target_ratio": TARGET_RATIO, "within_target": ratio <= TARGET_RATIO,
        "flower": flower, "in_process_before": before, "in_process_after": after,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
