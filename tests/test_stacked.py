"""Vectorised training: a stack of devices must train exactly as the same devices one by one."""

from __future__ import annotations

import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from devices.cohort import plan_cohorts, stacks_in_use
from devices.pool import StackCache, trace_stack, warm_up_order
from devices.stacked import StackedReplica, narrow_chunks, stacked_batches
from devices.stacked_layers import NotStackable, forward, stack_plan
from devices.stacked_optimizer import StackedOptimizer
from devices.stacked_program import has_max_pooling
from devices.trainer import ModelReplica, OptimizerSpec, SampleSpec, batch_plan, epoch_orders
from engine.models import ModelRegistry

DEVICE_SIZES = (70, 33, 100)  # unequal: the short device finishes early, last batches are partial
BATCH = 16
EPOCHS = 2
SEEDS = (11, 12, 13)


def device_samples(fashion):
    samples, start = [], 0
    for size in DEVICE_SIZES:
        samples.append((fashion.x_train[start:start + size], fashion.y_train[start:start + size].astype(np.int32)))
        start += size
    return samples


def max_difference(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def flat(weights) -> np.ndarray:
    return np.concatenate([np.ravel(w) for w in weights])


def assert_same_training(got, want, received):
    """Equal up to float32 rounding: the two paths differ by far less than 0.1% of what training changed.

    Rounding differs because grouped convolutions and batched matmuls sum in
    another order, and Adam divides by sqrt(v) + 1e-7, which magnifies it
    where gradients are almost zero; so do the kinks of ReLU and max-pooling,
    where a rounding-sized change sends a step's gradient to another unit (the
    default CNN, ``same`` padding: 3% of the largest update on one convolution
    weight of one of the three devices, the other two equal to 1e-6, while the
    norm of the difference stays at 1.5e-4 of the update's). A real difference
    (a wrong batch, a missed mask) shows up as a sizeable fraction of the
    update's norm and of every device's weights.
    """
    difference, update = flat(got) - flat(want), flat(want) - flat(received)
    assert np.linalg.norm(difference) < 1e-3 * np.linalg.norm(update)
    assert np.max(np.abs(difference)) < 5e-2 * np.max(np.abs(update))


@pytest.mark.parametrize(
    "model_name, optimizer, proximal_mu",
    [("cnn", OptimizerSpec("adam"), 0.05), ("mlp", OptimizerSpec("sgd", momentum=0.9), 0.0)],
)
def test_a_stack_trains_each_device_exactly_as_training_it_alone(fashion, model_name, optimizer, proximal_mu):
    def build():
        return ModelRegistry().build(model_name, fashion.image_shape, fashion.num_classes)

    keras.utils.set_random_seed(0)
    alone = ModelReplica(build, optimizer)
    received = alone.get_weights()
    samples = device_samples(fashion)
    expected = []
    for (x, y), seed in zip(samples, SEEDS):
        alone.set_weights(received)
        alone.reset_optimizer(0.002)
        result = alone.train(x, y, epochs=EPOCHS, batch_size=BATCH, seed=seed, proximal_mu=proximal_mu)
        expected.append((alone.get_weights(), result, alone.evaluate(x[:25], y[:25])[:2]))

    stack = StackedReplica(build, optimizer, width=len(samples), xla=model_name == "mlp")  # XLA: dense-only
    stack.load(received)
    before = stack.evaluate([(x[:25], y[:25]) for x, y in samples])
    stack.reset_optimizer(0.002)
    results = stack.train(samples, EPOCHS, BATCH, SEEDS, proximal_mu=proximal_mu)
    after = stack.evaluate([(x[:25], y[:25]) for x, y in samples])

    alone.set_weights(received)
    for (x, y), (loss, accuracy) in zip(samples, before):
        assert (loss, accuracy) == pytest.approx(alone.evaluate(x[:25], y[:25])[:2], rel=1e-5)
    for weights, result, evaluation, (want_weights, want_result, want_evaluation) in zip(
        stack.get_weights(), results, after, expected
    ):
        assert max_difference(weights, received) > 1e-3  # it did train
        assert_same_training(weights, want_weights, received)
        assert result.steps == want_result.steps
        assert (result.loss, result.accuracy) == pytest.approx((want_result.loss, want_result.accuracy), rel=1e-5)
        assert evaluation == pytest.approx(want_evaluation, rel=1e-4)


def test_stacked_forward_matches_each_keras_model_for_strided_same_padding_and_pooling():
    def build():
        return keras.Sequential([
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="tanh"),
            keras.layers.AveragePooling2D(2, padding="same"),
            keras.layers.Conv2D(3, 2, use_bias=False),
            keras.layers.Activation("relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(5, activation="softmax"),
        ])

    models = [build() for _ in range(3)]
    ops = stack_plan(models[0])
    stacked = [tf.constant(np.stack([m.get_weights()[i] for m in models])) for i in range(len(models[0].weights))]
    images = np.random.default_rng(0).random((3, 7, 12, 12)).astype(np.float32)
    outputs = forward(ops, stacked, tf.constant(images)).numpy()
    for d, model in enumerate(models):
        np.testing.assert_allclose(outputs[d], model(images[d][..., None]).numpy(), atol=1e-6)


@pytest.mark.parametrize("activation, pool, pooled_first", [
    ("relu", keras.layers.MaxPooling2D, True), ("tanh", keras.layers.MaxPooling2D, True),
    ("gelu", keras.layers.MaxPooling2D, False), ("relu", keras.layers.AveragePooling2D, False),
])
def test_a_max_pooling_runs_before_a_monotonic_activation_with_the_same_outputs_and_gradients(
        activation, pool, pooled_first):
    def build():
        return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(3, 3, activation=activation),
                                 pool(2), keras.layers.Flatten(), keras.layers.Dense(4)])

    models = [build() for _ in range(2)]
    ops = stack_plan(models[0])
    assert (ops[0].pool is not None) == pooled_first and len(ops) == 4 - pooled_first
    stacked = [tf.constant(np.stack([m.get_weights()[i] for m in models])) for i in range(len(models[0].weights))]
    images = tf.constant(np.random.default_rng(1).random((2, 5, 8, 8)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(stacked)
        outputs = forward(ops, stacked, images)
        loss = tf.reduce_sum(outputs ** 2)
    gradients = tape.gradient(loss, stacked)
    for d, model in enumerate(models):
        with tf.GradientTape() as tape:
            alone = model(images[d][..., None])
            alone_loss = tf.reduce_sum(alone ** 2)
        np.testing.assert_allclose(outputs[d].numpy(), alone.numpy(), atol=1e-6)
        for got, want in zip(gradients, tape.gradient(alone_loss, model.trainable_weights)):
            np.testing.assert_allclose(got[d].numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


def test_stacks_with_max_pooling_step_outside_a_loop_and_dense_stacks_keep_their_loop():
    """A max pooling's gradient inside a compiled loop reaches oneDNN only in some processes
    (``devices.stacked_program.has_max_pooling``), so such stacks train one compiled call per step."""
    def plan(*layers):
        return stack_plan(keras.Sequential([keras.Input((8, 8, 1)), *layers, keras.layers.Flatten(),
                                            keras.layers.Dense(2)]))

    assert has_max_pooling(plan(keras.layers.Conv2D(2, 3, activation="relu"), keras.layers.MaxPooling2D()))
    assert has_max_pooling(plan(keras.layers.Conv2D(2, 3, activation="gelu"), keras.layers.MaxPooling2D()))
    assert not has_max_pooling(plan(keras.layers.Conv2D(2, 3), keras.layers.AveragePooling2D(2)))
    assert not has_max_pooling(plan())


@pytest.mark.parametrize(
    "layers, reason",
    [
        ([keras.layers.Flatten(), keras.layers.Dropout(0.5), keras.layers.Dense(10)], "Dropout"),
        ([keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(), keras.layers.Flatten(),
          keras.layers.Dense(10)], "non-trainable"),
        ([keras.layers.Dense(4), keras.layers.Flatten(), keras.layers.Dense(10)], "after Flatten"),
        ([keras.layers.Conv2D(4, 3, activation="softmax"), keras.layers.Flatten(), keras.layers.Dense(10)],
         "element-wise"),
    ],
)
def test_models_a_stack_cannot_reproduce_are_refused_with_the_reason(layers, reason):
    with pytest.raises(NotStackable, match=reason):
        stack_plan(keras.Sequential([keras.Input((28, 28, 1)), *layers]))


def test_functional_models_are_not_stacked():
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    with pytest.raises(NotStackable, match="Sequential"):
        stack_plan(model)


def test_batch_plan_holds_each_epochs_shuffle_in_batches_that_never_straddle_epochs():
    plan = batch_plan(num_samples=10, epochs=3, batch_size=4, seed=5)
    assert plan.shape == (9, 4)
    orders = epoch_orders(10, 3, 5).reshape(3, 10)
    for epoch in range(3):
        rows = plan[epoch * 3:(epoch + 1) * 3].ravel()
        assert list(rows[rows >= 0]) == list(orders[epoch])
        assert list(rows[-2:]) == [-1, -1]


def test_plan_cohorts_groups_devices_of_similar_length_within_the_width():
    steps = {d: s for d, s in enumerate([5, 50, 6, 48, 7, 49, 1, 51, 2, 3])}
    cohorts = plan_cohorts(steps, max_width=3, workers=2)
    assert sorted(d for c in cohorts for d in c) == list(range(10))
    assert len(cohorts) == 4 and all(1 <= len(c) <= 3 for c in cohorts)
    assert sorted(cohorts[0]) == [1, 5, 7]  # the three longest devices train together
    assert plan_cohorts(steps, max_width=16, workers=2) == [[1, 3, 4, 5, 7], [0, 2, 6, 8, 9]]
    assert plan_cohorts({4: 10}, max_width=16, workers=2) == [[4]]
    assert plan_cohorts({}, max_width=16, workers=2) == []


def test_plan_cohorts_puts_devices_with_alike_short_batches_together():
    steps = {d: 2 for d in range(8)}  # 33 to 64 samples at batch 32: two steps each
    samples = dict(enumerate([33, 64, 40, 60, 35, 62, 38, 58]))
    assert plan_cohorts(steps, max_width=4, workers=2, samples=samples) == [[1, 3, 5, 7], [0, 2, 4, 6]]
    assert plan_cohorts(steps, max_width=4, workers=2) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # no samples: by id


def test_short_batches_run_at_their_fullest_devices_width_rounded_up():
    plans = [batch_plan(n, epochs=2, batch_size=32, seed=1) for n in (70, 6, 5)]
    _, mask = stacked_batches(plans, [0, 70, 76])
    # per epoch, 70 samples are batches of 32, 32 and 6; 6 and 5 samples one short batch (their 2nd epoch: step 1)
    assert narrow_chunks(mask, max_steps=25) == [(0, 2, 32), (2, 1, 8), (3, 2, 32), (5, 1, 8)]
    assert narrow_chunks(mask, max_steps=1)[:2] == [(0, 1, 32), (1, 1, 32)]
    assert narrow_chunks(mask[:, :, :16], max_steps=25, multiple=16) == [(0, 6, 16)]


def test_the_warm_up_builds_only_the_stacks_a_round_runs_at_the_same_time():
    # 10 equal devices in stacks of 4, 3, 3 on two threads: the second stack of 3 follows the first
    assert stacks_in_use([(4, 4 * 188), (3, 3 * 188), (3, 3 * 188)], workers=2) == {4: 1, 3: 1}
    assert stacks_in_use([(4, 400)] * 25, workers=2) == {4: 2}  # 100 devices in 25 stacks: both threads at once
    assert stacks_in_use([(4, 400)] * 25, workers=1) == {4: 1}
    assert stacks_in_use([(2, 10), (2, 10), (1, 5)], workers=3) == {2: 2, 1: 1}
    assert stacks_in_use([(4, 40), (3, 3), (3, 3)], workers=2) == {4: 1, 3: 1}  # the short ones run one after another
    assert stacks_in_use([(4, 4), (3, 30), (3, 3)], workers=2) == {4: 1, 3: 2}  # the second 3 starts while the first runs
    assert stacks_in_use([], workers=2) == {}


def test_the_warm_up_traces_the_width_with_the_most_work_first():
    # the CLI's 10 devices: the two stacks of 3 are the longest chain, so 3 is traced before 4
    assert warm_up_order([(4, 4 * 188), (3, 3 * 188), (3, 3 * 188)], workers=2) == [3, 4]
    assert warm_up_order([(4, 400)] * 25, workers=2) == [4, 4]
    assert warm_up_order([(3, 30), (3, 30)], workers=2) == [3, 3]  # the dashboard's 6 devices
    assert warm_up_order([(4, 40), (2, 80)], workers=2) == [2, 4]
    assert warm_up_order([], workers=2) == []


def test_a_stack_of_linear_regressions_of_one_feature_trains_each_device_as_alone():
    """A kernel of one input and one output: its gradient's static shape once came out (None, None, 1), which
    the shared stack's step loop refused, so every stacked regression device failed and the federation
    did not learn."""
    spec = SampleSpec((1,), "float32", "regression")
    rng = np.random.default_rng(0)
    samples = []
    for size in DEVICE_SIZES:
        x = rng.normal(size=(size, 1)).astype(np.float32)
        samples.append((x, (5 * x[:, 0] + 3).astype(np.float32)))

    def build():
        return ModelRegistry().build("linear", (1,), 1)

    keras.utils.set_random_seed(0)
    alone = ModelReplica(build, OptimizerSpec("adam"), samples=spec)
    received = alone.get_weights()
    stack = StackedReplica(build, OptimizerSpec("adam"), width=len(samples), samples=spec)
    stack.load(received)
    stack.reset_optimizer(0.05)
    results = stack.train(samples, EPOCHS, BATCH, SEEDS)
    for (x, y), seed, weights, result in zip(samples, SEEDS, stack.get_weights(), results):
        alone.set_weights(received)
        alone.reset_optimizer(0.05)
        want = alone.train(x, y, epochs=EPOCHS, batch_size=BATCH, seed=seed)
        assert_same_training(weights, alone.get_weights(), received)
        assert result.loss == pytest.approx(want.loss, rel=1e-5)


@pytest.mark.parametrize("optimizer", [OptimizerSpec("adam"), OptimizerSpec("sgd", momentum=0.9),
                                       OptimizerSpec("sgd", momentum=0.0)])
def test_the_stacked_optimizer_steps_exactly_as_the_keras_optimizer(optimizer):
    rng = np.random.default_rng(0)
    weight = tf.Variable(rng.normal(size=(3, 5)).astype(np.float32))
    keras_optimizer = optimizer.build()
    keras_optimizer.build([weight])
    keras_optimizer.learning_rate.assign(0.05)
    stacked = StackedOptimizer.of(optimizer)
    weights, slots = [tf.constant(weight.numpy())], stacked.fresh_slots([weight])
    for step in range(4):
        gradient = tf.constant(rng.normal(size=(3, 5)).astype(np.float32))
        keras_optimizer.apply_gradients([(gradient, weight)])
        slots, weights = stacked.apply(tf.constant(step, tf.int64), tf.constant(0.05), slots, [gradient], weights)
        assert np.array_equal(weights[0].numpy(), weight.numpy())
    state = [v.numpy() for v in keras_optimizer.variables if v.name not in ("iteration", "learning_rate")]
    assert all(np.array_equal(a.numpy(), b) for a, b in zip(slots, state)) and len(slots) == len(state)


def test_stacks_of_every_width_share_one_trace(fashion):
    def build():
        return ModelRegistry().build("mlp", fashion.image_shape, fashion.num_classes)

    samples = device_samples(fashion)
    first = StackedReplica(build, OptimizerSpec("adam"), width=3)
    trace_stack(first, BATCH, uneven=True)  # both training variants, as the warm-up traces them
    traced = [f.experimental_get_tracing_count() for f in first._program.functions()]
    for width in (2, 3, 1):  # another width, another stack of the same width, one device
        stack = StackedReplica(build, OptimizerSpec("adam"), width=width)
        assert stack._program is first._program
        stack.load(first.get_weights()[0])
        stack.reset_optimizer(0.01)
        stack.train(samples[:width], epochs=1, batch_size=BATCH, seeds=SEEDS[:width])
        stack.evaluate(samples[:width])
    assert [f.experimental_get_tracing_count() for f in first._program.functions()] == traced


def test_convolutional_stacks_share_one_trace_per_width(fashion):
    """A grouped convolution needs its number of devices when traced, so a convolutional model's stacks share
    a trace per width: another stack of that width, in this federation or the next, traces nothing."""
    def build():
        return ModelRegistry().build("cnn", fashion.image_shape, fashion.num_classes)

    samples = device_samples(fashion)[:2]
    first = StackedReplica(build, OptimizerSpec("adam"), width=2)
    trace_stack(first, BATCH, uneven=True)
    traced = [f.experimental_get_tracing_count() for f in first._program.functions()]
    again = StackedReplica(build, OptimizerSpec("adam"), width=2)
    assert again._program is first._program
    again.load(first.get_weights()[0])
    again.reset_optimizer(0.01)
    again.train(samples, epochs=1, batch_size=BATCH, seeds=SEEDS[:2])
    again.evaluate(samples)
    assert [f.experimental_get_tracing_count() for f in first._program.functions()] == traced
    assert StackedReplica(build, OptimizerSpec("adam"), width=3)._program is not first._program


class Payload:
    """Stands in only for what the cache stores (it reads ``width``), not for the cache under test."""

    def __init__(self, width: int):
        self.width = width


def test_a_worker_waits_for_a_stack_the_warm_up_is_building_instead_of_building_its_own():
    built = []
    cache = StackCache(lambda width: built.append(width) or Payload(width))
    cache.reserve([3, 3])
    taken = []
    workers = [threading.Thread(target=lambda: taken.append(cache.take(3))) for _ in range(3)]
    for worker in workers:
        worker.start()
    time.sleep(0.2)
    assert built == [] and taken == []  # all three wait: two stacks are coming
    ready = Payload(3)
    cache.fulfil(3, ready)  # the first trace is done: one worker gets it
    cache.fulfil(3, None)  # the second will not come: the others build their own
    for worker in workers:
        worker.join(timeout=10)
    assert not any(worker.is_alive() for worker in workers)
    assert sum(stack is ready for stack in taken) == 1 and built == [3, 3]
    assert cache.take(4).width == 4 and built == [3, 3, 4]  # nothing reserved: built at once


def test_a_stacked_federation_ends_where_the_one_by_one_federation_ends(make_federation):
    settings = dict(model="cnn", partition="dirichlet", num_devices=4, train_samples=800, rounds=2,
                    strategy="fedprox", faults={3: "crash"}, precision="float32")  # the equivalence is a float32 one
    one_by_one = make_federation(stack_width=1, **settings)
    stacked = make_federation(**settings)
    assert "one by one" in one_by_one.training_note and "vectorised" in stacked.training_note
    initial = one_by_one.global_weights
    results = []
    for federation in (one_by_one, stacked):
        federation.start()
        snapshot = federation.wait(timeout=300)
        assert snapshot.status.value == "finished", snapshot.message
        results.append(snapshot.history)
    assert_same_training(stacked.global_weights, one_by_one.global_weights, initial)
    for alone, together in zip(*results):
        assert [p.kind for p in alone.problems] == [p.kind for p in together.problems] == ["failed"]
        assert [d.device_id for d in alone.devices] == [d.device_id for d in together.devices] == [0, 1, 2]
        assert together.global_accuracy == pytest.approx(alone.global_accuracy, abs=0.002)
        for a, b in zip(alone.devices, together.devices):
            assert (b.train_loss, b.accuracy, b.received_accuracy) == pytest.approx(
                (a.train_loss, a.accuracy, a.received_accuracy), abs=1e-3)


def test_a_model_that_cannot_be_stacked_trains_one_by_one_and_says_why(fashion):
    from engine.config import FederationConfig
    from engine.federation import Federation

    registry = ModelRegistry()
    registry.register("dropout-mlp", lambda shape, classes: keras.Sequential(
        [keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
         keras.layers.Dropout(0.2), keras.layers.Dense(classes)]))
    config = FederationConfig(model="dropout-mlp", num_devices=2, train_samples=400, test_samples=200, rounds=1)
    federation = Federation(config, dataset=fashion, registry=registry)
    try:
        assert "one by one" in federation.training_note and "Dropout" in federation.training_note
        federation.start()
        snapshot = federation.wait(timeout=120)
    finally:
        federation.close()
    assert snapshot.status.value == "finished" and len(snapshot.history[0].devices) == 2


def tracing_counts(federation) -> list[int]:
    """How often each compiled function of the idle stacks and of the server's evaluation has been traced."""
    idle = federation._pool._stack_cache._idle
    stacks = [stack for width in sorted(idle) for stack in idle[width]]
    functions = [f for s in stacks for f in s.compiled_functions()]
    return [f.experimental_get_tracing_count() for f in functions + [federation._runner.evaluator._evaluate_batch]]


def test_construction_warms_up_the_stacks_round_one_uses_and_rounds_reuse_them(make_federation):
    federation = make_federation(rounds=2)  # 3 devices on 2 workers: stacks of 2 and 1
    federation._warm_up.join(timeout=120)
    assert federation._pool._stack_cache.idle_widths() == {2: 1, 1: 1}
    traced = tracing_counts(federation)
    snapshot = federation.run_to_end()
    assert snapshot.status.value == "finished", snapshot.message
    assert federation._pool._stack_cache.idle_widths() == {2: 1, 1: 1}  # no stack was built for the rounds
    assert tracing_counts(federation) == traced  # and nothing was traced again: the warm-up traced it all
