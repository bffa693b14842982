"""Engine round vs plain Keras ``model.fit`` over the same 60,000 samples.

Both sides train the same model with the same optimizer at batch 32 for one
pass over the training set: the reference is one epoch of ``model.fit`` on
the whole set; the engine is one federated round of 10 IID devices, one local
epoch each (its time includes aggregation and the server's evaluation on the
10,000 test images). Each is timed after a warm-up; the median of ``--repeats``
runs is reported, and the ratio engine/reference is printed per model.

    FL_DATA_DIR=../shared/datasets python -m benchmarks.engine_vs_fit
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from data.datasets import load_dataset  # noqa: E402
from devices.trainer import OptimizerSpec  # noqa: E402
from engine.config import FederationConfig  # noqa: E402
from engine.federation import Federation  # noqa: E402
from engine.models import ModelRegistry  # noqa: E402


def time_model_fit(dataset, model_name: str, config: FederationConfig, repeats: int) -> list[float]:
    """Seconds per epoch of plain ``model.fit`` (batch 32, whole training set)."""
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
    return seconds


def time_engine_rounds(dataset, config: FederationConfig, repeats: int) -> tuple[list[float], list[float], float]:
    """Seconds per round (first round is the warm-up), train-only seconds, final accuracy."""
    federation = Federation(config.with_changes(rounds=repeats + 1), dataset=dataset)
    try:
        federation.start()
        snapshot = federation.wait()
    finally:
        federation.close()
    rounds = snapshot.history[1:]
    return [r.seconds for r in rounds], [r.train_seconds for r in rounds], snapshot.history[-1].global_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "mlp"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="engine worker threads to measure")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    dataset = load_dataset("fashion-mnist", args.data_dir)
    base = FederationConfig(num_devices=10, partition="iid", local_epochs=1, batch_size=32, local_test_fraction=0.0)
    results = []
    for model_name in args.models:
        reference = statistics.median(time_model_fit(dataset, model_name, base, args.repeats))
        for workers in args.workers:
            config = base.with_changes(model=model_name, workers=workers)
            rounds, train_only, accuracy = time_engine_rounds(dataset, config, args.repeats)
            engine = statistics.median(rounds)
            result = {
                "model": model_name,
                "workers": workers,
                "reference_fit_seconds": round(reference, 3),
                "engine_round_seconds": round(engine, 3),
                "engine_train_seconds": round(statistics.median(train_only), 3),
                "ratio": round(engine / reference, 3),
                "accuracy_after_rounds": round(accuracy, 4),
            }
            results.append(result)
            print(
                f"{model_name:>4} workers={workers}: model.fit {reference:6.2f} s/epoch, "
                f"engine {engine:6.2f} s/round (train {result['engine_train_seconds']:.2f} s) "
                f"-> ratio {result['ratio']:.3f}",
                flush=True,
            )
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"benchmark": "engine_vs_fit", "results": results, "peak_rss_mb": round(peak_rss_mb, 1)}))


if __name__ == "__main__":
    main()
