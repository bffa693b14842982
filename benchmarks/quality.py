"""The learning-quality targets of issue 14, run through the real CLI, next to a centralised Keras reference.

1. ``iid``: the CLI defaults (CNN, 10 IID devices, 1 local epoch, batch 32, FedAvg), 5 rounds:
   target >= 0.89 global test accuracy.
2. ``dirichlet-0.1``: 10 devices under Dirichlet(0.1) label skew, 10 rounds of 2 local epochs:
   target >= 0.85, with the method of ``examples/dirichlet-0.1.toml`` (``python -m engine run --config``).

Each target runs ``python -m engine run ... --json --no-save`` in a child process, exactly as a user
would, and prints the accuracy of every round, the first round that reaches the target, whether the
target is met, the command, and a JSON line. The reference is plain ``model.fit`` with the same model,
optimizer, learning rate and batch size on the whole training set, evaluated on the whole test set after
each of ``--reference-epochs`` epochs, so the federation's loss against centralised training is a
figure measured in the same run. The load average is printed at the start and end (the machine is
shared; accuracies do not depend on it, times do).

    FL_DATA_DIR=../shared/datasets python -m benchmarks.quality            # the targets (slow: ~25 CNN epochs)
    FL_DATA_DIR=../shared/datasets python -m benchmarks.quality --quick    # smoke run: MLP, 3,000 samples
    FL_DATA_DIR=../shared/datasets python -m benchmarks.quality --targets iid --reference-epochs 0 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
DIRICHLET_PRESET = "examples/dirichlet-0.1.toml"


@dataclass(frozen=True)
class Target:
    """A configuration, given as ``python -m engine run`` options, and the accuracy it must reach."""

    name: str
    description: str
    options: tuple[str, ...]
    accuracy: float
    rounds: int


TARGETS = {
    "iid": Target("iid", "CNN, 10 IID devices, 1 local epoch, batch 32, the defaults",
                  ("--model", "cnn", "--devices", "10", "--partition", "iid", "--local-epochs", "1",
                   "--batch-size", "32", "--rounds", "5"), 0.89, 5),
    "dirichlet-0.1": Target("dirichlet-0.1", "CNN, 10 devices, Dirichlet(0.1), 2 local epochs, preset "
                            + DIRICHLET_PRESET, ("--config", DIRICHLET_PRESET), 0.85, 10),
}
QUICK = ("--model", "mlp", "--train-samples", "3000", "--test-samples", "1000", "--rounds", "2")
"""Appended to every target's options by ``--quick`` (later options win): a smoke run, not the targets."""


def rounds_to(target: float, accuracies: list[float]) -> int | None:
    """First round (1-based) whose accuracy reaches ``target``; None if none does."""
    return next((i + 1 for i, accuracy in enumerate(accuracies) if accuracy >= target), None)


def load() -> float:
    return round(os.getloadavg()[0], 1)


def run_target(options: tuple[str, ...]) -> tuple[list[float], dict]:
    """Run the CLI with ``options``; the global accuracy of every round and the summary line."""
    command = [sys.executable, "-m", "engine", "run", *options, "--json", "--no-save"]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if completed.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({completed.returncode}): {completed.stderr[-2000:]}")
    lines = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    return [line["global_accuracy"] for line in lines if "round" in line], lines[-1]


def centralised_reference(model_name: str, epochs: int, train_samples: int | None) -> dict:
    """Test accuracy of plain ``model.fit`` after each epoch: the model's default optimizer and learning rate,
    batch 32, the whole training set (or its first ``train_samples``), the whole test set."""
    import keras

    from data.datasets import load_dataset
    from devices.trainer import OptimizerSpec
    from engine.model_defaults import training_defaults
    from engine.models import ModelRegistry

    dataset = load_dataset("fashion-mnist")
    defaults = training_defaults(model_name, dataset.task)
    keras.utils.set_random_seed(0)
    model = ModelRegistry().build(model_name, dataset.input_shape, dataset.num_classes)
    optimizer = OptimizerSpec(defaults.optimizer, defaults.momentum).build()
    optimizer.learning_rate = defaults.learning_rate
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    count = train_samples or len(dataset.y_train)
    x, y = dataset.x_train[:count, ..., None].astype("float32") / 255.0, dataset.y_train[:count]
    x_test = dataset.x_test[..., None].astype("float32") / 255.0
    accuracies = []
    for epoch in range(epochs):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        accuracies.append(round(float(model.evaluate(x_test, dataset.y_test, batch_size=2048, verbose=0)[1]), 4))
        print(f"centralised {model_name}, {defaults.optimizer} lr {defaults.learning_rate:g}, batch 32: "
              f"epoch {epoch + 1} accuracy {accuracies[-1]:.4f}  (load {load()})", flush=True)
    return {"model": model_name, "optimizer": defaults.optimizer, "learning_rate": defaults.learning_rate,
            "train_samples": count, "accuracy_per_epoch": accuracies}


def measure(target: Target, quick: bool, seed: int | None = None) -> dict:
    options = target.options + (QUICK if quick else ()) + (() if seed is None else ("--seed", str(seed)))
    started_load = load()
    accuracies, summary = run_target(options)
    reached = rounds_to(target.accuracy, accuracies[:target.rounds])
    command = "python -m engine run " + shlex.join(options) + " --json --no-save"
    for i, accuracy in enumerate(accuracies):
        print(f"{target.name}: round {i + 1} accuracy {accuracy:.4f}", flush=True)
    description = "QUICK SMOKE RUN (MLP, 3,000 samples, 2 rounds), not the target" if quick else target.description
    print(f"{target.name}: {description}: target >= {target.accuracy} within {target.rounds} rounds: "
          f"{'MET' if reached else 'NOT MET'} (rounds to target: {reached or '-'}, final {accuracies[-1]:.4f}, "
          f"best {max(accuracies):.4f}); load {started_load} -> {load()}", flush=True)
    print(f"{target.name}: command: FL_DATA_DIR=../shared/datasets {command}", flush=True)
    return {"target": target.name, "accuracy_target": target.accuracy, "rounds_allowed": target.rounds,
            "accuracy_per_round": [round(a, 4) for a in accuracies], "rounds_to_target": reached,
            "met": reached is not None, "seconds": round(summary.get("seconds") or 0.0, 1),
            "load_average": [started_load, load()], "command": command}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: every target on the MLP, 3,000 samples, 2 rounds (targets not expected met)")
    parser.add_argument("--seed", type=int, default=None, help="the runs' --seed (default: the config's, 0)")
    parser.add_argument("--reference-epochs", type=int, default=None,
                        help="epochs of the centralised reference (default 5, quick 2; 0: skip it)")
    args = parser.parse_args()
    epochs = args.reference_epochs if args.reference_epochs is not None else (2 if args.quick else 5)
    results: dict = {"benchmark": "quality", "quick": args.quick}
    if epochs:
        results["centralised"] = centralised_reference("mlp" if args.quick else "cnn", epochs,
                                                       3000 if args.quick else None)
    results["targets"] = [measure(TARGETS[name], args.quick, args.seed) for name in args.targets]
    iid = next((t for t in results["targets"] if t["target"] == "iid"), None)
    if iid and epochs:
        central = results["centralised"]["accuracy_per_epoch"]
        rounds = min(len(central), len(iid["accuracy_per_round"]))
        gap = round(iid["accuracy_per_round"][rounds - 1] - central[rounds - 1], 4)
        results["iid_minus_centralised"] = gap
        print(f"iid after {rounds} rounds minus centralised after {rounds} epochs: {gap:+.4f}", flush=True)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
