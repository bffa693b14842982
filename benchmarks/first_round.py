"""The first round against a steady one, and how long "Create federation" takes.

Two workloads: the CLI defaults (10 IID devices over all 60,000 samples, CNN
and MLP) and a small dashboard federation (6 devices, 6,000 samples, CNN).
Each runs in its own process, twice: as a script does (create, start at
once) and as the dashboard does (create, the user reads the page for a
moment, ``--think`` seconds at most, while the engine warms up in the
background, then start). Create is timed from nothing: loading the data set
(the dashboard caches it per process, so both are printed) and building the
federation. Round times are wall-clock from ``start`` to the round's result,
so round 1 includes any wait for the warm-up; the steady round is the median
of the next ``--rounds``.

    FL_DATA_DIR=../shared/datasets python -m benchmarks.first_round
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from benchmarks.child import next_round, run_child

WORKLOADS = {
    "cli-cnn": dict(model="cnn"),
    "cli-mlp": dict(model="mlp"),
    "dashboard-cnn": dict(model="cnn", num_devices=6, train_samples=6000),
}


def measure(workload: str, think: float, rounds: int, precision: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    from data.datasets import load_dataset
    from engine.config import FederationConfig
    from engine.federation import Federation

    imported = time.perf_counter()
    dataset = load_dataset("fashion-mnist")
    loaded = time.perf_counter()
    federation = Federation(FederationConfig(**WORKLOADS[workload], precision=precision), dataset=dataset)
    created = time.perf_counter()
    try:
        if think > 0:
            federation._warm_up.join(think)  # the user looking at the page; at most ``think`` seconds
        waited = time.perf_counter() - created

        def timed_round() -> float:
            began = time.perf_counter()
            next_round(federation)
            return time.perf_counter() - began

        first = timed_round()
        steady = [timed_round() for _ in range(rounds)]
    finally:
        federation.close()
    return {
        "workload": workload,
        "precision": federation.precision.precision,
        "import_seconds": round(imported - started, 2),
        "load_dataset_seconds": round(loaded - imported, 2),
        "create_seconds": round(created - loaded, 2),
        "think_seconds": round(waited, 2),
        "first_round_seconds": round(first, 3),
        "steady_round_seconds": round(statistics.median(steady), 3),
        "ratio": round(first / statistics.median(steady), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--think", type=float, nargs="+", default=[0.0, 10.0],
                        help="seconds between create and start (0: a script; the dashboard: a few)")
    parser.add_argument("--rounds", type=int, default=2, help="steady rounds after the first")
    parser.add_argument("--precision", default="float32", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], float(args.child[1]), args.rounds, args.precision)))
        return
    from engine.hardware import cpu_info

    print(f"CPU: {cpu_info().describe()}", flush=True)
    results = []
    for workload in args.workloads:
        for think in args.think:
            r = run_child("benchmarks.first_round", workload, str(think), "--rounds", str(args.rounds),
                          "--precision", args.precision)
            results.append(r)
            print(f"{workload:>13} {r['precision']} start after {r['think_seconds']:.1f} s: round 1 "
                  f"{r['first_round_seconds']:.2f} s / steady {r['steady_round_seconds']:.2f} s = {r['ratio']:.2f}x; "
                  f"create {r['create_seconds']:.2f} s (+ load data set {r['load_dataset_seconds']:.2f} s, "
                  f"import {r['import_seconds']:.2f} s)", flush=True)
    print(json.dumps({"benchmark": "first_round", "cpu": cpu_info().describe(), "results": results}))


if __name__ == "__main__":
    main()
