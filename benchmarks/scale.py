"""Many devices on one machine: seconds per round and peak memory for 10, 100 and 1,000 devices.

Fashion-MNIST split with Dirichlet(0.5) label skew, sampling fraction 0.1, CNN,
one local epoch at batch 32, devices trained as vectorised stacks (the
default) and one by one (``--stack-widths 1``). Each measurement runs in its
own process so that its peak RSS is its own. Every round trains on about 10% of the training set
whatever the number of devices, so seconds per round should stay flat while
the number of devices grows a hundredfold; the reference in the same run is
one plain ``model.fit`` epoch over the same 6,000 samples.

    FL_DATA_DIR=../shared/datasets python -m benchmarks.scale
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from benchmarks.child import peak_rss_mb, run_child

SIZES = (10, 100, 1000)


def measure(num_devices: int, rounds: int, model: str, stack_width: int) -> dict:
    """Run in a child process: build the federation, time ``rounds`` rounds after a warm-up."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from engine.config import FederationConfig
    from engine.federation import Federation

    started = time.perf_counter()
    config = FederationConfig(model=model, num_devices=num_devices, partition="dirichlet", alpha=0.5, fraction=0.1,
                              rounds=rounds + 1, stack_width=stack_width)
    federation = Federation(config)
    setup = time.perf_counter() - started
    snapshot = federation.run_to_end()
    timed = snapshot.history[1:]
    return {
        "devices": num_devices,
        "stack_width": stack_width,
        "sampled_per_round": len(timed[-1].selected),
        "setup_seconds": round(setup, 2),
        "seconds_per_round": round(statistics.median(r.seconds for r in timed), 3),
        "train_samples_per_round": int(statistics.median(sum(d.samples for d in r.devices) for r in timed)),
        "final_accuracy": round(snapshot.history[-1].global_accuracy, 4),
        "peak_rss_mb": peak_rss_mb(),
    }


def reference_fit(model_name: str, samples: int) -> float:
    """Seconds of one plain ``model.fit`` epoch over ``samples`` samples at batch 32 (after a warm-up)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from data.datasets import load_dataset
    from engine.models import ModelRegistry

    dataset = load_dataset("fashion-mnist")
    model = ModelRegistry().build(model_name, dataset.image_shape, dataset.num_classes)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = dataset.x_train[:samples, ..., None].astype("float32") / 255.0
    model.fit(x[:512], dataset.y_train[:512], batch_size=32, verbose=0)
    started = time.perf_counter()
    model.fit(x, dataset.y_train[:samples], batch_size=32, verbose=0)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--stack-widths", type=int, nargs="+", default=[4, 1],
                        help="devices per stack to measure (1: one by one)")
    parser.add_argument("--child", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.rounds, args.model, args.child[1])))
        return
    results = []
    for width in args.stack_widths:
        for size in args.sizes:
            result = run_child("benchmarks.scale", str(size), str(width), "--rounds", str(args.rounds),
                               "--model", args.model)
            results.append(result)
            print(f"stack={width:>2} {size:>5} devices ({result['sampled_per_round']} per round): "
                  f"{result['seconds_per_round']:.2f} s/round, peak RSS {result['peak_rss_mb']:.0f} MB, "
                  f"setup {result['setup_seconds']:.1f} s, accuracy {result['final_accuracy']:.3f}", flush=True)
    reference = reference_fit(args.model, 6000)
    for result in results:
        result["ratio_to_fit_on_same_samples"] = round(
            result["seconds_per_round"] / (reference * result["train_samples_per_round"] / 6000), 3)
    print(f"reference: model.fit over 6,000 samples {reference:.2f} s")
    print(json.dumps({"benchmark": "scale", "reference_fit_6000_seconds": round(reference, 3), "results": results}))


if __name__ == "__main__":
    main()
