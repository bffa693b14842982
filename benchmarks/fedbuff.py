"""Time to a target accuracy, FedAvg vs FedBuff, when a few devices are slow.

10 devices on IID Fashion-MNIST (a small training set), 3 of them 5x slower, the MLP. A synchronous FedAvg
round waits for its slowest device; FedBuff applies every K arrived updates, so the slow devices only
contribute (stale, weighted down) when they arrive. Both are timed on the engine's simulated clock
(``engine.rounds.simulated_time``: local steps x slowdown, in local steps of a full-speed device; a FedAvg
round takes its slowest device's time) and on this machine's wall clock (seconds of training and evaluation,
noisy on a shared machine). Prints each method's simulated and wall-clock time to the target, their ratios
(FedAvg / FedBuff: above 1, FedBuff is faster), and one JSON line. Repeats alternate the two methods.

    FL_DATA_DIR=../shared/datasets python -m benchmarks.fedbuff
    FL_DATA_DIR=../shared/datasets python -m benchmarks.fedbuff --target 0.75 --buffer-size 3 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from data.datasets import load_dataset  # noqa: E402
from engine.config import FederationConfig  # noqa: E402
from engine.federation import Federation  # noqa: E402


def time_to(target: float, history, clock: str) -> float | None:
    """The running total of ``clock`` (``simulated_time`` or ``seconds``) at the first round reaching ``target``."""
    elapsed = np.cumsum([getattr(r, clock) for r in history])
    return next((float(t) for t, r in zip(elapsed, history) if r.global_accuracy >= target), None)


def run(method: str, args, dataset) -> dict:
    """One run of ``method`` ("fedavg" or "fedbuff"); its times to the target and final accuracy."""
    slow = {device: args.slowdown for device in range(args.slow_devices)}
    params = {"buffer_size": args.buffer_size} if method == "fedbuff" else {}
    rounds = args.fedbuff_steps if method == "fedbuff" else args.fedavg_rounds
    config = FederationConfig(model="mlp", num_devices=args.devices, train_samples=args.train_samples,
                              test_samples=args.test_samples, rounds=rounds, strategy=method,
                              strategy_params=params, slowdowns=slow, stack_width=1, seed=args.seed)
    history = Federation(config, dataset=dataset).run_to_end().history
    return {
        "method": method,
        "rounds": len(history),
        "final_accuracy": round(history[-1].global_accuracy, 4),
        "simulated_to_target": time_to(args.target, history, "simulated_time"),
        "seconds_to_target": time_to(args.target, history, "seconds"),
        "rounds_to_target": next((r.round for r in history if r.global_accuracy >= args.target), None),
        "mean_staleness": round(float(np.mean([d.staleness for r in history for d in r.devices])), 3),
    }


def ratio(reference: float | None, candidate: float | None) -> float | None:
    return round(reference / candidate, 2) if reference and candidate else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--slow-devices", type=int, default=3)
    parser.add_argument("--slowdown", type=float, default=5.0)
    parser.add_argument("--buffer-size", type=int, default=3, help="FedBuff's K")
    parser.add_argument("--train-samples", type=int, default=3000)
    parser.add_argument("--test-samples", type=int, default=1000)
    parser.add_argument("--target", type=float, default=0.75)
    parser.add_argument("--fedavg-rounds", type=int, default=8)
    parser.add_argument("--fedbuff-steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1, help="each repeat runs FedAvg then FedBuff, seed + i")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dataset = load_dataset("fashion-mnist")
    results = []
    for repeat in range(args.repeats):
        seeded = argparse.Namespace(**{**vars(args), "seed": args.seed + repeat})
        fedavg, fedbuff = run("fedavg", seeded, dataset), run("fedbuff", seeded, dataset)
        pair = {"repeat": repeat, "fedavg": fedavg, "fedbuff": fedbuff,
                "simulated_ratio": ratio(fedavg["simulated_to_target"], fedbuff["simulated_to_target"]),
                "wall_clock_ratio": ratio(fedavg["seconds_to_target"], fedbuff["seconds_to_target"])}
        results.append(pair)
        for name in ("fedavg", "fedbuff"):
            r = pair[name]
            wall = r["seconds_to_target"] and round(r["seconds_to_target"], 1)
            print(f"repeat {repeat} {name:<8} to {args.target}: simulated {r['simulated_to_target']} "
                  f"(round/step {r['rounds_to_target']}), wall-clock {wall} s; "
                  f"final {r['final_accuracy']:.4f} after {r['rounds']}; mean staleness {r['mean_staleness']}",
                  flush=True)
        print(f"repeat {repeat} FedAvg / FedBuff time to {args.target}: simulated x{pair['simulated_ratio']}, "
              f"wall-clock x{pair['wall_clock_ratio']}", flush=True)
    print(json.dumps({"benchmark": "fedbuff", "target": args.target, "devices": args.devices,
                      "slow_devices": args.slow_devices, "slowdown": args.slowdown,
                      "buffer_size": args.buffer_size, "train_samples": args.train_samples, "results": results}))


if __name__ == "__main__":
    main()
