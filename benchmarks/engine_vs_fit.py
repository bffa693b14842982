"""Engine round vs plain Keras ``model.fit`` over the same 60,000 samples, interleaved in one process.

Both sides train the same model with the same optimizer at batch 32 for one
pass over the training set: the reference is one epoch of float32
``model.fit`` on the whole set; the engine is one federated round of 10 IID
devices, one local epoch each (its time includes aggregation and the server's
evaluation on the 10,000 test images). The engine runs with devices trained
one by one (``--stack-widths 1``) and as vectorised stacks (the default width
4), in each ``--precisions`` (``bfloat16``: mixed precision).

This machine's speed is bimodal and shared, so the two sides are interleaved
in one process: fit, round, fit, round, ... and every round is divided by the
fit epoch just before it (its neighbour); the median of those ratios is
reported, with the achieved GFLOP/s of both sides (FLOPs counted from the
model's layers, :mod:`engine.flops`), the CPU model and its relevant flags.
After a warm-up (one fit epoch on 1,024 samples, one round per variant),
``--repeats`` neighbour pairs are timed per variant; the accuracy is the
engine's after its last round.

    FL_DATA_DIR=../shared/datasets python -m benchmarks.engine_vs_fit
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from benchmarks.child import next_round, peak_rss_mb, run_child

BASE = dict(num_devices=10, partition="iid", local_epochs=1, batch_size=32, local_test_fraction=0.0)


def reference_model(model_name: str):
    """A compiled float32 Keras model, its training data, and a function timing one ``model.fit`` epoch."""
    import keras

    from data.datasets import load_dataset
    from devices.trainer import OptimizerSpec
    from engine.config import FederationConfig
    from engine.models import ModelRegistry

    dataset = load_dataset("fashion-mnist")
    config = FederationConfig(**BASE)
    model = ModelRegistry().build(model_name, dataset.image_shape, dataset.num_classes)
    optimizer = OptimizerSpec(config.optimizer, config.momentum).build()
    optimizer.learning_rate = config.learning_rate
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x = dataset.x_train[..., None].astype("float32") / 255.0
    y = dataset.y_train
    model.fit(x[:1024], y[:1024], batch_size=config.batch_size, epochs=1, verbose=0)  # warm-up: trace and build

    def fit_epoch() -> float:
        started = time.perf_counter()
        model.fit(x, y, batch_size=config.batch_size, epochs=1, verbose=0)
        return time.perf_counter() - started

    return model, len(y), fit_epoch


def interleaved(model_name: str, variants: list[dict], repeats: int) -> dict:
    """Fit, round, fit, round, ... in this process; per variant the neighbour ratios and what they mean."""
    from engine.config import FederationConfig
    from engine.federation import Federation
    from engine.flops import forward_flops, training_flops
    from engine.hardware import cpu_info

    model, samples, fit_epoch = reference_model(model_name)
    train_flops, eval_flops = training_flops(model), forward_flops(model)
    federations = [Federation(FederationConfig(**BASE, model=model_name, **v)) for v in variants]
    try:
        first_rounds = [next_round(f) for f in federations]  # warm-up
        pairs: list[list[tuple[float, object]]] = [[] for _ in variants]
        for _ in range(repeats):
            for index, federation in enumerate(federations):
                fit_seconds = fit_epoch()
                pairs[index].append((fit_seconds, next_round(federation)))
        results = []
        for variant, federation, first, timed in zip(variants, federations, first_rounds, pairs):
            fits = [fit for fit, _ in timed]
            rounds = [r for _, r in timed]
            work = [train_flops * sum(d.samples for d in r.devices) + eval_flops * r.test_samples for r in rounds]
            results.append({
                "model": model_name,
                **variant,
                "training_note": federation.training_note,
                "ratio": round(statistics.median(r.seconds / fit for fit, r in timed), 3),
                "ratios": [round(r.seconds / fit, 3) for fit, r in timed],
                "reference_fit_seconds": round(statistics.median(fits), 3),
                "engine_round_seconds": round(statistics.median(r.seconds for r in rounds), 3),
                "engine_train_seconds": round(statistics.median(r.train_seconds for r in rounds), 3),
                "first_round_seconds": round(first.seconds, 3),
                "reference_gflops": round(statistics.median(train_flops * samples / fit / 1e9 for fit in fits), 1),
                "engine_gflops": round(statistics.median(w / r.seconds / 1e9 for w, r in zip(work, rounds)), 1),
                "accuracy_after_rounds": round(rounds[-1].global_accuracy, 4),
                "rounds": rounds[-1].round,
            })
    finally:
        for federation in federations:
            federation.close()
    return {"cpu": cpu_info().describe(), "training_mflop_per_sample": round(train_flops / 1e6, 2),
            "peak_rss_mb": peak_rss_mb(), "load_average": round(os.getloadavg()[0], 1), "results": results}


def variants_of(args) -> list[dict]:
    variants = [dict(workers=w, stack_width=width, xla=False, precision=p)
                for p in args.precisions for w in args.workers for width in args.stack_widths]
    if args.xla:
        variants += [dict(v, xla=True) for v in variants if v["stack_width"] > 1]
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "mlp"])
    parser.add_argument("--repeats", type=int, default=3, help="timed fit/round pairs per variant after the warm-up")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="engine worker threads to measure")
    parser.add_argument("--stack-widths", type=int, nargs="+", default=[1, 4],
                        help="devices per stack to measure (1: one by one)")
    parser.add_argument("--precisions", nargs="+", default=["float32"], choices=["float32", "bfloat16", "auto"],
                        help="engine training precisions to measure (the reference is always float32)")
    parser.add_argument("--xla", action="store_true", help="also measure stacks compiled with XLA (dense-only models)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        print(json.dumps(interleaved(args.child[0], variants_of(args), args.repeats)))
        return

    from engine.hardware import cpu_info

    print(f"CPU: {cpu_info().describe()}", flush=True)
    results = []
    for model_name in args.models:
        child_args = [model_name, "--repeats", str(args.repeats), "--workers", *map(str, args.workers),
                      "--stack-widths", *map(str, args.stack_widths), "--precisions", *args.precisions]
        measured = run_child("benchmarks.engine_vs_fit", *child_args, *(["--xla"] if args.xla else []))
        print(f"{model_name:>4}: {measured['training_mflop_per_sample']} MFLOP per training sample, "
              f"process peak RSS {measured['peak_rss_mb']:.0f} MB, load average at the end {measured['load_average']}",
              flush=True)
        for result in measured["results"]:
            results.append(result)
            print(
                f"{model_name:>4} workers={result['workers']} stack={result['stack_width']:>2} "
                f"{result['precision']}{' xla' * result['xla']}: engine {result['engine_round_seconds']:6.2f} s/round "
                f"(train {result['engine_train_seconds']:.2f} s, {result['engine_gflops']} GFLOP/s) vs model.fit "
                f"{result['reference_fit_seconds']:.2f} s ({result['reference_gflops']} GFLOP/s) -> median neighbour "
                f"ratio {result['ratio']:.3f} {result['ratios']}, first round {result['first_round_seconds']:.2f} s, "
                f"accuracy after {result['rounds']} rounds {result['accuracy_after_rounds']:.4f}",
                flush=True,
            )
    print(json.dumps({"benchmark": "engine_vs_fit", "cpu": cpu_info().describe(), "results": results}))


if __name__ == "__main__":
    main()
