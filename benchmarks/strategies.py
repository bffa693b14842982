"""Every strategy and every personalisation mode side by side on label-skewed Fashion-MNIST.

10 devices, Dirichlet(alpha) label skew, the same local work for every method:
each synchronous strategy runs ``--rounds`` rounds of ``--local-epochs`` local
epochs on all 10 devices; FedBuff (asynchronous, one server step per
``buffer_size`` arrived updates) runs as many server steps as make the same
number of device updates; the personalisation modes run FedAvg with
``--personalize MODE``. Strategies whose device-side math needs local SGD
(SCAFFOLD) train with SGD at ``--sgd-lr``, the others with the model's default
(Adam 0.002). FedAvg is the reference, measured first in the same run.

Per method: final and best global accuracy (the server's test set), the final
one's difference to FedAvg's, the device updates until the global accuracy
first reached ``--target`` (FedAvg: 10 per round), the bytes sent up relative
to FedAvg, and for the personalisation modes the mean over devices of the
personalised models' accuracy on each device's own held-out data. One JSON line
at the end.

    FL_DATA_DIR=../shared/datasets python -m benchmarks.strategies          # quick (minutes): MLP, 12,000 samples
    FL_DATA_DIR=../shared/datasets python -m benchmarks.strategies --full   # the real figures: CNN, all data,
                                                                            # 10 rounds of 2 local epochs (hours)
    FL_DATA_DIR=../shared/datasets python -m benchmarks.strategies --strategies fedavg scaffold --personalize none
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from data.datasets import load_dataset  # noqa: E402
from engine.config import FederationConfig  # noqa: E402
from engine.federation import Federation  # noqa: E402
from engine.personalization import PERSONALIZATIONS  # noqa: E402
from engine.strategies import STRATEGIES  # noqa: E402

DEVICES = 10
QUICK = {"model": "mlp", "train_samples": 12000, "rounds": 5, "target": 0.7}
FULL = {"model": "cnn", "train_samples": None, "rounds": 10, "target": 0.85}
"""The two sizes of run: the default (minutes on a shared 2-core machine) and ``--full`` (the issue's target run)."""


@dataclass(frozen=True)
class Method:
    """One row of the table: a strategy, optionally with a personalisation mode on top."""

    strategy: str
    personalize: str = "none"

    @property
    def label(self) -> str:
        return self.strategy if self.personalize == "none" else f"{self.strategy} + {self.personalize}"


def methods(strategies: list[str], personalizations: list[str]) -> list[Method]:
    """FedAvg first (the reference), then the other strategies, then FedAvg with each personalisation mode."""
    chosen = ["fedavg"] + [s for s in strategies if s != "fedavg"]
    return [Method(s) for s in chosen] + [Method("fedavg", p) for p in personalizations if p != "none"]


def server_steps(strategy: str, rounds: int, params: dict[str, float]) -> int:
    """Rounds (synchronous) or server steps (asynchronous) that make ``rounds * DEVICES`` device updates."""
    cls = STRATEGIES[strategy]
    if not cls.asynchronous:
        return rounds
    buffer_size = int(params.get("buffer_size", cls.parameters()["buffer_size"]))
    return math.ceil(rounds * DEVICES / buffer_size)


def method_config(method: Method, alpha: float, args: argparse.Namespace) -> FederationConfig:
    local = dict(optimizer="sgd", learning_rate=args.sgd_lr) if STRATEGIES[method.strategy].needs_sgd else {}
    return FederationConfig(
        model=args.model, num_devices=DEVICES, partition="dirichlet", alpha=alpha, strategy=method.strategy,
        rounds=server_steps(method.strategy, args.rounds, {}), local_epochs=args.local_epochs,
        train_samples=args.train_samples, personalize=method.personalize, precision=args.precision, seed=args.seed,
        **local,
    )


def updates_to(target: float, history) -> int | None:
    """Device updates aggregated until the first round whose global accuracy reaches ``target``."""
    done = 0
    for result in history:
        done += len(result.devices)
        if result.global_accuracy >= target:
            return done
    return None


def summarise(history, reference, target: float) -> dict:
    """Final/best accuracy, updates to ``target``, and the final accuracy and upload relative to ``reference``."""
    accuracies = [r.global_accuracy for r in history]
    personal = history[-1].personalized_accuracy
    return {
        "rounds": len(history),
        "updates": sum(len(r.devices) for r in history),
        "final_accuracy": round(accuracies[-1], 4),
        "best_accuracy": round(max(accuracies), 4),
        "final_vs_fedavg": round(accuracies[-1] - reference[-1].global_accuracy, 4),
        "updates_to_target": updates_to(target, history),
        "bytes_up_vs_fedavg": round(sum(r.bytes_up for r in history) / sum(r.bytes_up for r in reference), 2),
        "personalized_accuracy": None if personal is None else round(personal, 4),
        "seconds": round(sum(r.seconds for r in history), 1),
    }


def table_line(result: dict) -> str:
    personal = result["personalized_accuracy"]
    return (f"| {result['method']} | {result['final_accuracy']:.3f} | {result['final_vs_fedavg']:+.3f} | "
            f"{result['best_accuracy']:.3f} | {result['updates_to_target'] or '-'} | "
            f"{result['bytes_up_vs_fedavg']:.2f} | {'-' if personal is None else f'{personal:.3f}'} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="the real figures: CNN, the whole training set, 10 rounds, target 0.85 (hours)")
    parser.add_argument("--strategies", nargs="+", default=["all"], help="strategy names, or 'all' (default)")
    parser.add_argument("--personalize", nargs="+", default=[p for p in PERSONALIZATIONS if p != "none"],
                        choices=PERSONALIZATIONS, help="personalisation modes run on FedAvg ('none': no such rows)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1])
    parser.add_argument("--rounds", type=int, default=None, help="default 5, --full 10")
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--model", default=None, help="default mlp, --full cnn")
    parser.add_argument("--target", type=float, default=None, help="global accuracy target; default 0.7, --full 0.85")
    parser.add_argument("--train-samples", type=int, default=None,
                        help="a random subset of the training set; default 12,000, --full all (0)")
    parser.add_argument("--sgd-lr", type=float, default=0.05, help="local SGD learning rate for SCAFFOLD")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16", "auto"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, value in (FULL if args.full else QUICK).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.train_samples = args.train_samples or None
    unknown = [s for s in args.strategies if s != "all" and s not in STRATEGIES]
    if unknown:
        parser.error(f"unknown strategy {', '.join(unknown)}; choose from {', '.join(STRATEGIES)} or all")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    strategies = list(STRATEGIES) if "all" in args.strategies else args.strategies
    dataset = load_dataset("fashion-mnist")
    results = []
    for alpha in args.alphas:
        reference = None  # FedAvg's history at this alpha
        print(f"alpha {alpha}, {args.model}, {args.train_samples or 'all'} training samples, {args.rounds} rounds "
              f"of {args.local_epochs} local epochs, target {args.target}", flush=True)
        print("| method | final | vs FedAvg | best | updates to target | bytes up vs FedAvg | personalised |\n"
              "|---|---|---|---|---|---|---|", flush=True)
        for method in methods(strategies, args.personalize):
            history = Federation(method_config(method, alpha, args), dataset=dataset).run_to_end().history
            reference = reference or history
            result = {"method": method.label, "alpha": alpha, **summarise(history, reference, args.target)}
            results.append(result)
            print(table_line(result), flush=True)
    print(json.dumps({"benchmark": "strategies", "model": args.model, "train_samples": args.train_samples,
                      "rounds": args.rounds, "local_epochs": args.local_epochs, "target": args.target,
                      "seed": args.seed, "results": results}))


if __name__ == "__main__":
    main()
