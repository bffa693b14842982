"""FedAvg, FedProx and FedAdam side by side on label-skewed Fashion-MNIST.

10 devices, Dirichlet(alpha) partitions for alpha 0.1 and 0.5, the same number
of rounds for every strategy. Prints the final and best accuracy and the first
round that reaches the target accuracy. Reference point: a published Flower
baseline reaches about 0.88 with FedAvg on Fashion-MNIST, Dirichlet(0.5), 10
clients, after 50 rounds of 10 local epochs (500 local epochs of work).

    FL_DATA_DIR=../shared/datasets python -m benchmarks.strategies --rounds 20 --local-epochs 2
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from data.datasets import load_dataset  # noqa: E402
from engine.config import FederationConfig  # noqa: E402
from engine.federation import Federation  # noqa: E402


def rounds_to(target: float, accuracies: list[float]) -> int | None:
    """First round (1-based) whose accuracy reaches ``target``."""
    return next((i + 1 for i, accuracy in enumerate(accuracies) if accuracy >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=["fedavg", "fedprox", "fedadam"])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--target", type=float, default=0.85)
    args = parser.parse_args()

    dataset = load_dataset("fashion-mnist")
    results = []
    for alpha in args.alphas:
        for strategy in args.strategies:
            config = FederationConfig(model=args.model, num_devices=10, partition="dirichlet", alpha=alpha,
                                      strategy=strategy, rounds=args.rounds, local_epochs=args.local_epochs)
            history = Federation(config, dataset=dataset).run_to_end().history
            accuracies = [r.global_accuracy for r in history]
            result = {
                "alpha": alpha,
                "strategy": strategy,
                "rounds": len(history),
                "local_epochs": args.local_epochs,
                "final_accuracy": round(accuracies[-1], 4),
                "best_accuracy": round(max(accuracies), 4),
                f"rounds_to_{args.target}": rounds_to(args.target, accuracies),
                "seconds_per_round": round(sum(r.seconds for r in history) / len(history), 2),
            }
            results.append(result)
            print(f"alpha={alpha:<4} {strategy:<8} final {result['final_accuracy']:.4f}  best {result['best_accuracy']:.4f}"
                  f"  rounds to {args.target}: {result[f'rounds_to_{args.target}']}", flush=True)
    print(json.dumps({"benchmark": "strategies", "results": results}))


if __name__ == "__main__":
    main()
