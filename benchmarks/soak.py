"""Soak test: does the engine's memory stay flat over many rounds?

    python -m benchmarks.soak                      # 200 rounds, stacked training, every round saved
    python -m benchmarks.soak --stack-width 1 --no-save --rounds 100
    python -m benchmarks.soak --trace              # also the Python allocations that grew the most

A small real workload (MLP, the engine's default 10 devices on 2 worker threads,
1,000 Fashion-MNIST samples, 200 test images) trains for ``--rounds`` rounds, polled like the CLI polls it. After each
round the resident set size (RSS, /proc/self/statm) is recorded; the slope of a
least-squares line through rounds ``--warmup``.. end is printed, in MB per round,
with a JSON line. Target: below 0.05 MB/round over 200 rounds (memory is flat;
what remains is the run's own history, a few KB per round).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc

import numpy as np

TARGET_MB_PER_ROUND = 0.05
POLL_SECONDS = 0.02


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def slope(rounds: list[int], values: list[float]) -> float:
    """Least-squares slope of ``values`` over ``rounds`` (MB per round)."""
    return float(np.polyfit(np.asarray(rounds, float), np.asarray(values, float), 1)[0])


def soak(rounds: int, stack_width: int, save: bool, data_dir: str | None, devices: int, workers: int) -> list[float]:
    """RSS after each of ``rounds`` rounds of a small real federation."""
    from data.datasets import load_dataset
    from engine.config import FederationConfig
    from engine.federation import Federation
    from engine.store import RunStore

    config = FederationConfig(model="mlp", num_devices=devices, train_samples=100 * devices, test_samples=200,
                              rounds=rounds, stack_width=stack_width, workers=workers)
    dataset = load_dataset(config.dataset, data_dir)
    with tempfile.TemporaryDirectory(prefix="soak-runs-") as folder:
        store = RunStore(folder) if save else None
        federation = Federation(config, dataset=dataset, store=store)
        federation.start()
        memory: list[float] = []
        try:
            while len(memory) < rounds:
                snapshot = federation.snapshot()  # as the CLI and dashboard poll it
                while len(memory) < snapshot.round:
                    memory.append(rss_mb())
                if not snapshot.is_live and snapshot.round < rounds:
                    raise RuntimeError(f"the run ended early: {snapshot.message}")
                time.sleep(POLL_SECONDS)
        finally:
            federation.close()
    return memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20, help="rounds left out of the slope (allocator warm-up)")
    parser.add_argument("--stack-width", type=int, default=4)
    parser.add_argument("--devices", type=int, default=10, help="devices, 100 training samples each")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-save", action="store_true", help="do not record the run (no store)")
    parser.add_argument("--data-dir", default=os.environ.get("FL_DATA_DIR"))
    parser.add_argument("--trace", action="store_true", help="tracemalloc: the Python allocations that grew most")
    args = parser.parse_args(argv)
    if args.rounds <= args.warmup + 10:
        parser.error(f"--rounds must exceed --warmup + 10 ({args.warmup + 10}), got {args.rounds}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.trace:
        tracemalloc.start(12)
    memory = soak(args.rounds, args.stack_width, not args.no_save, args.data_dir, args.devices, args.workers)
    measured = list(range(args.warmup + 1, args.rounds + 1))
    per_round = slope(measured, memory[args.warmup:])
    verdict = "flat" if per_round < TARGET_MB_PER_ROUND else "GROWING"
    print(f"RSS {memory[args.warmup - 1]:.1f} MB after round {args.warmup}, {memory[-1]:.1f} MB after round "
          f"{args.rounds}: slope {per_round:.4f} MB/round ({verdict}; target < {TARGET_MB_PER_ROUND})")
    if args.trace:
        for stat in tracemalloc.take_snapshot().statistics("traceback")[:8]:
            print(f"{stat.size / 1024:9.1f} KiB in {stat.count:6d} blocks: {stat.traceback.format()[-1].strip()}")
    print(json.dumps({"benchmark": "soak", "rounds": args.rounds, "warmup": args.warmup,
                      "devices": args.devices, "workers": args.workers, "stack_width": args.stack_width,
                      "save": not args.no_save,
                      "rss_start_mb": round(memory[args.warmup - 1], 1), "rss_end_mb": round(memory[-1], 1),
                      "slope_mb_per_round": round(per_round, 5), "target_mb_per_round": TARGET_MB_PER_ROUND}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
