"""How far XLA-compiled stacks drift from TensorFlow's own kernels: the same federation run both ways.

Two federations of the same settings (10 IID devices over all 60,000 samples,
the MLP, stacks of 4) run in one process, one with ``xla`` and one without.
After each round the benchmark prints both global accuracies and the distance
between the two global models, relative to how far the model without XLA has
moved since the start. XLA sums in another order; training magnifies that
rounding, Adam most (it divides by sqrt(v) + 1e-7), so the distance grows from
round to round while the accuracies stay alike.

    FL_DATA_DIR=../shared/datasets python -m benchmarks.xla_drift --optimizer sgd --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def distance(a, b) -> float:
    return float(np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a, b))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--lr", type=float, default=None, help="default: the settings' (adam), 0.05 (sgd)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks.child import next_round
    from data.datasets import load_dataset
    from engine.config import FederationConfig
    from engine.federation import Federation

    dataset = load_dataset("fashion-mnist")
    settings = dict(model="mlp", num_devices=10, partition="iid", local_test_fraction=0.0, optimizer=args.optimizer)
    if args.lr or args.optimizer == "sgd":
        settings.update(learning_rate=args.lr or 0.05, momentum=0.0)
    runs = {}
    for xla in (False, True):
        federation = Federation(FederationConfig(**settings, xla=xla), dataset=dataset)
        start = [w.copy() for w in federation.global_weights]
        rounds = []
        for _ in range(args.rounds):
            accuracy = next_round(federation).global_accuracy
            rounds.append((accuracy, [w.copy() for w in federation.global_weights]))
        federation.close()
        runs[xla] = (start, rounds)
    start = runs[False][0]
    report = []
    for index, ((plain_accuracy, plain), (xla_accuracy, compiled)) in enumerate(zip(runs[False][1], runs[True][1])):
        drift = distance(plain, compiled) / distance(plain, start)
        report.append({"round": index + 1, "accuracy": plain_accuracy, "accuracy_xla": xla_accuracy,
                       "relative_distance": round(drift, 5)})
        print(f"round {index + 1}: accuracy {plain_accuracy:.4f} without XLA, {xla_accuracy:.4f} with; models apart "
              f"by {drift:.2%} of the update since the start", flush=True)
    print(json.dumps({"benchmark": "xla_drift", "optimizer": args.optimizer, "rounds": report}))


if __name__ == "__main__":
    main()
