"""Many devices on one machine: set-up seconds, seconds per round and peak memory for 10 to 10,000 devices.

Fashion-MNIST split with Dirichlet(0.5) label skew over all 60,000 training
samples (10,000 devices hold about 6 samples each), CNN, one local epoch at
batch 32, devices trained as vectorised stacks (the default) and one by one
(``--stack-widths 1``). A tenth of the devices is sampled per round, at most
100, so a round of 1,000 or 10,000 devices trains 100 of them: its cost
should follow the devices sampled, not the devices that exist. The server
evaluates each round on a fixed sample of ``--eval-samples`` test images (the
engine's ``eval_samples``) and on all 10,000 after the last round, which is
reported separately.

Each size runs in its own process, so its peak RSS is its own. In that
process the reference, one plain float32 ``model.fit`` epoch over 6,000
samples, is timed before and after the rounds, and each timed round is
divided by the reference scaled to the samples that round trained.

    FL_DATA_DIR=../shared/datasets python -m benchmarks.scale
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from benchmarks.child import peak_rss_mb, run_child
from benchmarks.phases import timed_phases

SIZES = (10, 100, 1000, 10000)
REFERENCE_SAMPLES = 6000


def sampling_fraction(num_devices: int) -> float:
    """A tenth of the devices, at most 100 of them."""
    return min(0.1, 100 / num_devices)


def reference_fit(model_name: str):
    """A function timing one plain float32 ``model.fit`` epoch over ``REFERENCE_SAMPLES`` samples (after a warm-up)."""
    import keras

    from data.datasets import load_dataset
    from engine.models import ModelRegistry

    dataset = load_dataset("fashion-mnist")
    model = ModelRegistry().build(model_name, dataset.image_shape, dataset.num_classes)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = dataset.x_train[:REFERENCE_SAMPLES, ..., None].astype("float32") / 255.0
    y = dataset.y_train[:REFERENCE_SAMPLES]
    model.fit(x[:512], y[:512], batch_size=32, verbose=0)

    def fit_epoch() -> float:
        started = time.perf_counter()
        model.fit(x, y, batch_size=32, verbose=0)
        return time.perf_counter() - started

    return fit_epoch


def measure(num_devices: int, rounds: int, model: str, stack_width: int, eval_samples: int, precision: str) -> dict:
    """Run in a child process: reference, set-up, a warm-up round, ``rounds`` timed rounds, a final one, reference."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from engine.config import FederationConfig
    from engine.federation import Federation

    fit_epoch = reference_fit(model)
    before = fit_epoch()
    started = time.perf_counter()
    config = FederationConfig(model=model, num_devices=num_devices, partition="dirichlet", alpha=0.5,
                              fraction=sampling_fraction(num_devices), rounds=rounds + 2, stack_width=stack_width,
                              eval_samples=eval_samples, precision=precision)
    federation = Federation(config)
    setup = time.perf_counter() - started
    with timed_phases() as phases:
        snapshot = federation.run_to_end()
    after = fit_epoch()
    if snapshot.status.value != "finished":
        raise RuntimeError(snapshot.message)
    timed, final = snapshot.history[1:-1], snapshot.history[-1]
    reference = (before + after) / 2
    per_sample = reference / REFERENCE_SAMPLES
    return {
        "devices": num_devices,
        "stack_width": stack_width,
        "precision": federation.precision.precision,
        "sampled_per_round": len(timed[-1].selected),
        "setup_seconds": round(setup, 2),
        "first_round_seconds": round(snapshot.history[0].seconds, 3),
        "seconds_per_round": round(statistics.median(r.seconds for r in timed), 3),
        "eval_seconds_per_round": round(statistics.median(r.eval_seconds for r in timed), 3),
        "test_samples_per_round": timed[-1].test_samples,
        "final_round_seconds": round(final.seconds, 3),
        "final_test_samples": final.test_samples,
        "train_samples_per_round": int(statistics.median(sum(d.samples for d in r.devices) for r in timed)),
        "reference_fit_seconds": [round(before, 3), round(after, 3)],
        "ratio_to_fit_on_same_samples": round(statistics.median(
            r.seconds / (per_sample * max(sum(d.samples for d in r.devices), 1)) for r in timed), 3),
        "phase_seconds_per_round": {
            phase: round(statistics.median(phases.of_round(r.round).get(phase, 0.0) for r in timed), 3)
            for phase in sorted({p for r in timed for p in phases.of_round(r.round)})
        },
        "load_average": round(os.getloadavg()[0], 1),
        "final_accuracy": round(final.global_accuracy, 4),
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after a warm-up round, before the final)")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--stack-widths", type=int, nargs="+", default=[4, 1],
                        help="devices per stack to measure (1: one by one)")
    parser.add_argument("--eval-samples", type=int, default=1000, help="server test samples evaluated per round")
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--child", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.rounds, args.model, args.child[1], args.eval_samples,
                                 args.precision)))
        return
    from engine.hardware import cpu_info

    print(f"CPU: {cpu_info().describe()}", flush=True)
    results = []
    for width in args.stack_widths:
        for size in args.sizes:
            result = run_child("benchmarks.scale", str(size), str(width), "--rounds", str(args.rounds),
                               "--model", args.model, "--eval-samples", str(args.eval_samples),
                               "--precision", args.precision)
            results.append(result)
            print(f"stack={width:>2} {result['precision']} {size:>5} devices ({result['sampled_per_round']} per round, "
                  f"{result['train_samples_per_round']} samples): {result['seconds_per_round']:.2f} s/round "
                  f"(evaluation on {result['test_samples_per_round']} test samples {result['eval_seconds_per_round']:.2f} s)"
                  f" = {result['ratio_to_fit_on_same_samples']:.2f}x model.fit on the same samples; "
                  f"round 1 {result['first_round_seconds']:.2f} s, final round on {result['final_test_samples']} test "
                  f"samples {result['final_round_seconds']:.2f} s; set-up {result['setup_seconds']:.2f} s, "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB, accuracy {result['final_accuracy']:.3f}; "
                  f"load average {result['load_average']}", flush=True)
            print("    per round, seconds summed over threads: " + ", ".join(
                f"{phase} {seconds:.2f}" for phase, seconds in result["phase_seconds_per_round"].items()), flush=True)
    print(json.dumps({"benchmark": "scale", "cpu": cpu_info().describe(), "results": results}))


if __name__ == "__main__":
    main()
