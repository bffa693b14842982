"""Which stack width trains many tiny devices fastest: one round's stacks per width, interleaved in one process.

The workload is the 1,000-device round of ``benchmarks/scale.py``: Fashion-MNIST
split with Dirichlet(0.5) over 1,000 devices (about 54 training samples each),
the 100 devices round 1 samples, one local epoch at batch 32. For each width the
100 devices are cut into stacks as a round cuts them (``plan_cohorts``) and every
stack runs the compiled calls a device cohort makes: load the model and reset
the optimizer, evaluate on the local test split, train, evaluate again, read the
weights back. One thread, so the widths compare compute, not scheduling. After a
warm-up pass per width, ``--repeats`` passes are timed in turn (width a, width b,
..., a, b, ...) and each width is reported as the median ratio to the first
width's neighbouring pass, with the load average.

    FL_DATA_DIR=../shared/datasets python -m benchmarks.stack_widths --widths 4 16 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from functools import partial


def workload(model_name: str, precision: str):
    """The sampled devices of round 1 of the 1,000-device scale run, and a builder of stacks for them."""
    import numpy as np

    from data.datasets import load_dataset
    from devices.stacked import StackedReplica
    from devices.trainer import OptimizerSpec
    from engine.config import FederationConfig
    from engine.models import ModelRegistry
    from engine.rounds import select_devices
    from engine.setup import build_devices, stored_samples

    dataset = load_dataset("fashion-mnist")
    config = FederationConfig(model=model_name, num_devices=1000, partition="dirichlet", alpha=0.5, fraction=0.1)
    devices = build_devices(dataset, config)
    selected = select_devices(range(len(devices)), config.fraction, config.min_devices,
                              np.random.default_rng([config.seed, 1]))
    build = partial(ModelRegistry().build, model_name, dataset.input_shape, dataset.num_classes)
    samples = stored_samples(dataset.x_train, dataset.task)

    def make_stack(width: int) -> StackedReplica:
        return StackedReplica(build, OptimizerSpec(config.optimizer, config.momentum), width, samples=samples,
                              precision=precision)

    return [devices[d] for d in selected], config, make_stack


def one_pass(stacks: dict, cohorts: list, weights, config) -> dict[str, float]:
    """Every cohort through its stack once; seconds per phase and in all."""
    seconds: dict[str, float] = defaultdict(float)
    started = time.perf_counter()
    for cohort in cohorts:
        stack = stacks[len(cohort)]
        tests = [(d.data.x_test, d.data.y_test) for d in cohort]
        phases = (
            ("load+reset", lambda: (stack.load(weights), stack.reset_optimizer(config.learning_rate))),
            ("evaluate", lambda: stack.evaluate(tests)),
            ("train", lambda: stack.train([(d.data.x_train, d.data.y_train) for d in cohort], config.local_epochs,
                                          config.batch_size, seeds=list(range(len(cohort))))),
            ("evaluate", lambda: stack.evaluate(tests)),
            ("get weights", stack.get_weights),
        )
        for phase, call in phases:
            began = time.perf_counter()
            call()
            seconds[phase] += time.perf_counter() - began
    seconds["all"] = time.perf_counter() - started
    return dict(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 16, 50])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--precision", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from devices.cohort import plan_cohorts
    from devices.pool import trace_stack
    from devices.trainer import batches_per_epoch
    from engine.hardware import cpu_info

    print(f"CPU: {cpu_info().describe()}", flush=True)
    devices, config, make_stack = workload(args.model, args.precision)
    steps = {i: batches_per_epoch(d.data.num_train, config.batch_size) * config.local_epochs
             for i, d in enumerate(devices)}
    plans = {w: [[devices[i] for i in c] for c in plan_cohorts(steps, w, workers=1)] for w in args.widths}
    stacks: dict[int, dict] = {}
    for width, cohorts in plans.items():
        stacks[width] = {}
        for size in sorted({len(c) for c in cohorts}):
            stacks[width][size] = make_stack(size)
            trace_stack(stacks[width][size], config.batch_size, uneven=True)
    weights = [v.numpy()[0] for v in next(iter(stacks[args.widths[0]].values())).variables]
    for width in args.widths:  # warm-up pass: first runs of every shape
        one_pass(stacks[width], plans[width], weights, config)
    passes: dict[int, list[dict]] = {w: [] for w in args.widths}
    for _ in range(args.repeats):
        for width in args.widths:
            passes[width].append(one_pass(stacks[width], plans[width], weights, config))
    first = passes[args.widths[0]]
    for width in args.widths:
        ratios = [p["all"] / f["all"] for p, f in zip(passes[width], first)]
        phases = {phase: statistics.median(p[phase] for p in passes[width]) for phase in passes[width][0]}
        print(f"{args.model} {args.precision} width {width:>3} ({len(plans[width])} stacks): "
              f"{phases['all']:.2f} s per round of {len(devices)} devices on one thread, median ratio to width "
              f"{args.widths[0]} {statistics.median(ratios):.2f} {[round(r, 2) for r in ratios]}; "
              + ", ".join(f"{k} {v:.2f}" for k, v in phases.items() if k != "all")
              + f"; load average {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
