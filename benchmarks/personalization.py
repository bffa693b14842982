"""Personalisation under label skew: the global model vs each device's own, on each device's own held-out data.

Fashion-MNIST, ``--partition dirichlet --alpha 0.1`` (most devices hold one or
two classes), 10 devices, each ``--personalize`` mode run exactly as a user
runs the CLI (``--json``). Per mode: the mean accuracy over devices of the
global model each device received and of its personalised model, the mean of
the worst 10% of devices for both, and the round the personalised mean first
reached the issue's target (>= 0.95).

    FL_DATA_DIR=../shared/datasets python -m benchmarks.personalization [--model mlp] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from engine.personalization import worst_share_mean

TARGET = 0.95
MODES = ("finetune", "fedper", "ditto")


def run_mode(mode: str, args: argparse.Namespace) -> list[dict]:
    """The round lines of one CLI run with ``--personalize mode``."""
    command = [sys.executable, "-m", "engine", "run", "--model", args.model, "--devices", "10", "--partition",
               "dirichlet", "--alpha", "0.1", "--rounds", str(args.rounds), "--local-epochs", str(args.local_epochs),
               "--personalize", mode, "--seed", str(args.seed), "--json", *args.extra]
    if args.train_samples:
        command += ["--train-samples", str(args.train_samples)]
    output = subprocess.run(command, capture_output=True, text=True, check=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}).stdout
    return [line for line in map(json.loads, output.splitlines()) if not line.get("summary")]


def summarise(mode: str, rounds: list[dict]) -> dict:
    last = rounds[-1]
    reached = next((r["round"] for r in rounds if (r["personalized_accuracy"] or 0) >= TARGET), None)
    return {
        "mode": mode,
        "rounds": len(rounds),
        "server_accuracy": round(last["global_accuracy"], 4),
        "global_mean": round(last["device_global_accuracy"], 4),
        "global_worst10": round(worst_share_mean([d["received_accuracy"] for d in last["devices"]]), 4),
        "personal_mean": round(last["personalized_accuracy"], 4),
        "personal_worst10": round(worst_share_mean([d["personalized_accuracy"] for d in last["devices"]]), 4),
        "personal_by_round": [round(r["personalized_accuracy"], 4) for r in rounds],
        "round_reaching_target": reached,
        "seconds": round(sum(r["seconds"] for r in rounds), 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--train-samples", type=int, default=0, help="0: the whole training set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("extra", nargs="*", help="further `engine run` options, after --")
    args = parser.parse_args(argv)
    print(f"{'mode':>9} {'server':>7} {'global':>7} {'global w10':>10} {'personal':>8} {'personal w10':>12} "
          f"{'target':>18} {'seconds':>8}", flush=True)
    results = []
    for mode in args.modes:
        result = summarise(mode, run_mode(mode, args))
        results.append(result)
        met = (f"met in round {result['round_reaching_target']}" if result["round_reaching_target"]
               else f"not met in {result['rounds']}")
        print(f"{mode:>9} {result['server_accuracy']:>7.4f} {result['global_mean']:>7.4f} "
              f"{result['global_worst10']:>10.4f} {result['personal_mean']:>8.4f} {result['personal_worst10']:>12.4f} "
              f"{met:>18} {result['seconds']:>8.1f}", flush=True)
    print(json.dumps({"benchmark": "personalization", "target": TARGET, "model": args.model,
                      "local_epochs": args.local_epochs, "results": results}))


if __name__ == "__main__":
    main()
