"""Where round 1's extra time goes: when each warm-up trace and each stack's training starts and ends, per thread.

Creates a federation of one ``benchmarks.first_round`` workload, starts it at
once and prints, in seconds from "create", every stack build, warm-up trace,
stack training and server evaluation up to the end of round 1, with the thread
that ran it, then round 1 against the next rounds. Timing wrappers are set on
the classes for this process only.

    FL_DATA_DIR=../shared/datasets python -m benchmarks.warm_up_timeline --workload cli-mlp
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

from benchmarks.child import next_round
from benchmarks.first_round import WORKLOADS

TIMED = {
    "devices.stacked.StackedReplica": ("__init__", "train", "evaluate"),
    "devices.trainer.ModelReplica": ("__init__", "evaluate"),
    "devices.pool.WorkerPool": ("_one_at_a_time",),
    "engine.rounds.RoundRunner": ("collect",),
}


def timed(events: list, started: float, function, name: str):
    def run(*args, **kwargs):
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            width = getattr(args[0], "width", "") if args else ""
            events.append((began - started, time.perf_counter() - started, threading.current_thread().name,
                           f"{name}{f' (width {width})' if width else ''}"))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="cli-mlp", choices=list(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=2, help="steady rounds after the first")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import importlib

    from data.datasets import load_dataset
    from engine.config import FederationConfig
    from engine.federation import Federation

    events: list[tuple[float, float, str, str]] = []
    dataset = load_dataset("fashion-mnist")
    started = time.perf_counter()
    for path, methods in TIMED.items():
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        for method in methods:
            setattr(cls, method, timed(events, started, getattr(cls, method), f"{name}.{method}"))
    federation = Federation(FederationConfig(**WORKLOADS[args.workload]), dataset=dataset)
    try:
        rounds = []
        for _ in range(1 + args.rounds):
            began = time.perf_counter()
            next_round(federation)
            rounds.append((began - started, time.perf_counter() - started))
    finally:
        federation.close()
    for begin, end, thread, name in sorted(events):
        if begin <= rounds[0][1]:
            print(f"{begin:7.2f} {end:7.2f} {end - begin:6.2f} s  {thread:<20} {name}")
    first = rounds[0][1] - rounds[0][0]
    steady = statistics.median(end - begin for begin, end in rounds[1:])
    print(f"round 1 {first:.2f} s, steady {steady:.2f} s: {first / steady:.2f}x; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
