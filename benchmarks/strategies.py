"""Every strategy side by side on label-skewed Fashion-MNIST.

10 devices, Dirichlet(alpha) partitions for alpha 0.1 and 0.5, the same number
of rounds for every strategy. Prints the final and best accuracy, their
difference to FedAvg's in the same run, and the first round that reaches the
target accuracy. Strategies that need local SGD (SCAFFOLD) train with SGD at
``--sgd-lr``; the others with the engine's default Adam. Reference point: a published Flower
baseline reaches about 0.88 with FedAvg on Fashion-MNIST, Dirichlet(0.5), 10
clients, after 50 rounds of 10 local epochs (500 local epochs of work).

    FL_DATA_DIR=../shared/datasets python -m benchmarks.strategies --rounds 20 --local-epochs 2
    FL_DATA_DIR=../shared/datasets python -m benchmarks.strategies --strategies all --alphas 0.1 \
        --train-samples 12000 --rounds 5 --model mlp          # the README's table
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from data.datasets import load_dataset  # noqa: E402
from engine.config import FederationConfig  # noqa: E402
from engine.federation import Federation  # noqa: E402
from engine.strategies import STRATEGIES  # noqa: E402


def rounds_to(target: float, accuracies: list[float]) -> int | None:
    """First round (1-based) whose accuracy reaches ``target``."""
    return next((i + 1 for i, accuracy in enumerate(accuracies) if accuracy >= target), None)


def summarise(history, reference, target: float) -> dict:
    """Final/best accuracy, rounds to ``target``, and the final accuracy and upload relative to ``reference``."""
    accuracies = [r.global_accuracy for r in history]
    return {
        "rounds": len(history),
        "final_accuracy": round(accuracies[-1], 4),
        "best_accuracy": round(max(accuracies), 4),
        "final_vs_fedavg": round(accuracies[-1] - reference[-1].global_accuracy, 4),
        "rounds_to_target": rounds_to(target, accuracies),
        "bytes_up_vs_fedavg": round(sum(r.bytes_up for r in history) / sum(r.bytes_up for r in reference), 2),
        "seconds_per_round": round(sum(r.seconds for r in history) / len(history), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=["fedavg", "fedprox", "fedadam"],
                        help="strategy names, or 'all'")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--train-samples", type=int, default=None, help="a random subset, for quick runs")
    parser.add_argument("--sgd-lr", type=float, default=0.05, help="local SGD learning rate for SCAFFOLD")
    args = parser.parse_args()
    strategies = list(STRATEGIES) if args.strategies == ["all"] else args.strategies
    strategies = ["fedavg"] + [s for s in strategies if s != "fedavg"]  # the reference, measured first

    dataset = load_dataset("fashion-mnist")
    results = []
    for alpha in args.alphas:
        reference = None  # FedAvg's history at this alpha
        for strategy in strategies:
            local = dict(optimizer="sgd", learning_rate=args.sgd_lr) if STRATEGIES[strategy].needs_sgd else {}
            config = FederationConfig(model=args.model, num_devices=10, partition="dirichlet", alpha=alpha,
                                      strategy=strategy, rounds=args.rounds, local_epochs=args.local_epochs,
                                      train_samples=args.train_samples, **local)
            history = Federation(config, dataset=dataset).run_to_end().history
            reference = reference or history
            result = summarise(history, reference, target=args.target)
            result.update(alpha=alpha, strategy=strategy, local_epochs=args.local_epochs)
            results.append(result)
            print(f"alpha={alpha:<4} {strategy:<13} final {result['final_accuracy']:.4f} "
                  f"({result['final_vs_fedavg']:+.4f} vs FedAvg)  best {result['best_accuracy']:.4f}  "
                  f"rounds to {args.target}: {result['rounds_to_target']}  "
                  f"bytes up x{result['bytes_up_vs_fedavg']:.2f}", flush=True)
    print(json.dumps({"benchmark": "strategies", "results": results}))


if __name__ == "__main__":
    main()
