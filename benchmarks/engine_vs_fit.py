"""Engine round vs plain Keras ``model.fit`` over the same 60,000 samples.

Both sides train the same model with the same optimizer at batch 32 for one
pass over the training set: the reference is one epoch of ``model.fit`` on
the whole set; the engine is one federated round of 10 IID devices, one local
epoch each (its time includes aggregation and the server's evaluation on the
10,000 test images). The engine runs with devices trained one by one
(``--stack-widths 1``) and as vectorised stacks (the default width 4). Each
measurement runs in its own process, so its peak RSS is its own; the first
round is the warm-up, the median of the next ``--repeats`` rounds is reported
with the ratio engine/reference, and the accuracy after the last round.

    FL_DATA_DIR=../shared/datasets python -m benchmarks.engine_vs_fit
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from benchmarks.child import peak_rss_mb, run_child

BASE = dict(num_devices=10, partition="iid", local_epochs=1, batch_size=32, local_test_fraction=0.0)


def time_model_fit(model_name: str, repeats: int) -> dict:
    """Seconds per epoch of plain ``model.fit`` (batch 32, whole training set), median of ``repeats``."""
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
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.fit(x, y, batch_size=config.batch_size, epochs=1, verbose=0)
        seconds.append(time.perf_counter() - started)
    return {"seconds": statistics.median(seconds), "peak_rss_mb": peak_rss_mb()}


def time_engine_rounds(model_name: str, workers: int, stack_width: int, xla: bool, repeats: int) -> dict:
    """Median seconds per round after a warm-up round, train-only seconds, accuracy after the last round."""
    from engine.config import FederationConfig
    from engine.federation import Federation

    config = FederationConfig(**BASE, model=model_name, workers=workers, stack_width=stack_width, xla=xla,
                              rounds=repeats + 1)
    snapshot = Federation(config).run_to_end()
    rounds = snapshot.history[1:]
    return {
        "seconds": statistics.median(r.seconds for r in rounds),
        "train_seconds": statistics.median(r.train_seconds for r in rounds),
        "accuracy": snapshot.history[-1].global_accuracy,
        "rounds": len(snapshot.history),
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "mlp"])
    parser.add_argument("--repeats", type=int, default=4, help="timed rounds after the warm-up round (and fit epochs)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="engine worker threads to measure")
    parser.add_argument("--stack-widths", type=int, nargs="+", default=[1, 4],
                        help="devices per stack to measure (1: one by one)")
    parser.add_argument("--xla", action="store_true", help="also measure stacks compiled with XLA (dense-only models)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        kind, model_name, *rest = args.child
        if kind == "fit":
            print(json.dumps(time_model_fit(model_name, args.repeats)))
        else:
            print(json.dumps(time_engine_rounds(model_name, int(rest[0]), int(rest[1]), rest[2] == "xla", args.repeats)))
        return

    results = []
    for model_name in args.models:
        reference = run_child("benchmarks.engine_vs_fit", "fit", model_name, "--repeats", str(args.repeats))
        print(f"{model_name:>4} model.fit: {reference['seconds']:6.2f} s/epoch, peak RSS {reference['peak_rss_mb']:.0f} MB",
              flush=True)
        variants = [(w, width, "plain") for w in args.workers for width in args.stack_widths]
        if args.xla:
            variants += [(w, width, "xla") for w in args.workers for width in args.stack_widths if width > 1]
        for workers, width, compiler in variants:
            engine = run_child("benchmarks.engine_vs_fit", "engine", model_name, str(workers), str(width), compiler,
                               "--repeats", str(args.repeats))
            result = {
                "model": model_name,
                "workers": workers,
                "stack_width": width,
                "xla": compiler == "xla",
                "reference_fit_seconds": round(reference["seconds"], 3),
                "reference_peak_rss_mb": reference["peak_rss_mb"],
                "engine_round_seconds": round(engine["seconds"], 3),
                "engine_train_seconds": round(engine["train_seconds"], 3),
                "ratio": round(engine["seconds"] / reference["seconds"], 3),
                "accuracy_after_rounds": round(engine["accuracy"], 4),
                "rounds": engine["rounds"],
                "engine_peak_rss_mb": engine["peak_rss_mb"],
            }
            results.append(result)
            print(
                f"{model_name:>4} workers={workers} stack={width:>2}{' xla' * (compiler == 'xla')}: "
                f"engine {engine['seconds']:6.2f} s/round "
                f"(train {engine['train_seconds']:.2f} s) -> ratio {result['ratio']:.3f}, accuracy after "
                f"{engine['rounds']} rounds {engine['accuracy']:.4f}, peak RSS {engine['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    print(json.dumps({"benchmark": "engine_vs_fit", "results": results}))


if __name__ == "__main__":
    main()
