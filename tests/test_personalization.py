"""Personalisation (``--personalize finetune|fedper|ditto``): its math exactly, then tiny real runs.

The runs are real: the MLP on real Fashion-MNIST, 4 devices under a
Dirichlet(0.1) label skew (each device knows one or two classes), 2 rounds,
one module-scoped run per mode shared by the tests.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from engine.config import FederationConfig

TINY = dict(model="mlp", num_devices=4, train_samples=800, test_samples=200, rounds=2, partition="dirichlet",
            alpha=0.1, seed=3)


# -- the math ----------------------------------------------------------------------------------------------
def test_fedper_split_and_merge_are_inverse_and_exact():
    from devices.personal_weights import merge_weights, split_weights, with_own_head

    weights = [np.full((2, i + 1), i, np.float32) for i in range(5)]
    body, head = split_weights(weights, (3, 4))
    assert [w[0, 0] for w in body] == [0, 1, 2] and [w[0, 0] for w in head] == [3, 4]
    assert all(a is b for a, b in zip(merge_weights(body, head, (3, 4)), weights))
    own = [np.full((2, 4), 9.0, np.float32), np.full((2, 5), 8.0, np.float32)]
    started = with_own_head(weights, own, (3, 4))
    assert [w[0, 0] for w in started] == [0, 1, 2, 9, 8]
    assert with_own_head(weights, None, (3, 4)) == weights
    with pytest.raises(ValueError, match="outside"):
        split_weights(weights, (7,))


def test_fedper_head_is_the_last_dense_layer():
    from engine.models import ModelRegistry
    from engine.personalization import head_positions

    registry = ModelRegistry()
    mlp = registry.build("mlp", (28, 28), 10)
    head = head_positions(mlp)
    assert head == (4, 5) and [tuple(mlp.weights[i].shape) for i in head] == [(200, 10), (10,)]
    with pytest.raises(ValueError, match="nothing else"):
        head_positions(registry.build("linear", (28, 28), 10))


def test_ditto_gradient_is_the_local_gradient_plus_lambda_times_the_distance():
    from devices.personal_weights import ditto_gradient

    g, v, w = [np.array([1.0, -2.0])], [np.array([3.0, 0.5])], [np.array([1.0, 1.0])]
    assert np.array_equal(ditto_gradient(g, v, w, 0.5)[0], np.array([1.0 + 0.5 * 2.0, -2.0 + 0.5 * -0.5]))
    assert np.array_equal(ditto_gradient(g, v, w, 0.0)[0], g[0])


def test_a_replica_step_applies_dittos_gradient_toward_its_anchor(fashion):
    """One SGD step from v with anchor w moves by exactly -lr * ditto_gradient(g, v, w, lambda)."""
    from devices.personal_weights import ditto_gradient
    from devices.trainer import ModelReplica, OptimizerSpec
    from engine.models import ModelRegistry

    from engine.setup import sample_spec

    build = lambda: ModelRegistry().build("mlp", fashion.input_shape, 10)  # noqa: E731
    replica = ModelReplica(build, OptimizerSpec("sgd", momentum=0.0), samples=sample_spec(fashion))
    rng = np.random.default_rng(0)
    w = replica.get_weights()
    v = [a + rng.normal(0, 0.05, a.shape).astype(np.float32) for a in w]
    x, y = fashion.x_train[:32], fashion.y_train[:32]
    lr, lam = 0.1, 0.7

    def one_step(mu: float) -> list[np.ndarray]:
        replica.set_weights(v, anchor=w)
        replica.reset_optimizer(lr)
        replica.train(x, y, epochs=1, batch_size=32, seed=0, proximal_mu=mu)
        return replica.get_weights()

    plain = one_step(0.0)
    gradient = [(a - b) / lr for a, b in zip(v, plain)]
    expected = [a - lr * d for a, d in zip(v, ditto_gradient(gradient, v, w, lam))]
    for got, want in zip(one_step(lam), expected):
        np.testing.assert_allclose(got, want, atol=2e-6)


def test_finetune_takes_exactly_k_full_batches_of_the_devices_samples():
    from devices.personal_weights import finetune_indices

    chosen = finetune_indices(50, 16, 5, seed=1)
    assert len(chosen) == 80 and set(chosen) == set(range(50))  # every sample once, then 30 again
    assert np.array_equal(chosen, finetune_indices(50, 16, 5, seed=1))
    assert len(finetune_indices(3, 32, 2, seed=0)) == 64


def test_body_only_updates_are_aggregated_and_the_servers_head_is_kept():
    from devices.messages import DeviceMetrics, DeviceUpdate
    from engine.personalization import SharedPart
    from engine.strategies import build_strategy

    weights = [np.zeros(3, np.float32), np.full(2, 5.0, np.float32), np.ones(2, np.float32)]
    part = SharedPart(head=(1,))
    metrics = DeviceMetrics(0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1, 0.0)
    updates = [DeviceUpdate(0, [np.full(3, 1.0, np.float32), np.full(2, 3.0, np.float32)], 1, metrics),
               DeviceUpdate(1, [np.full(3, 4.0, np.float32), np.full(2, 6.0, np.float32)], 3, metrics)]
    shared = part.of(weights)
    assert [w.tolist() for w in shared] == [[0, 0, 0], [1, 1]]
    aggregated = part.merged(build_strategy("fedavg", {}).aggregate(1, shared, updates), weights)
    assert [w.tolist() for w in aggregated] == [[3.25] * 3, [5.0, 5.0], [5.25, 5.25]]


def test_worst_share_and_mean_skip_missing_values():
    from engine.personalization import mean_finite, worst_share_mean

    values = [0.9, float("nan"), 0.5, 0.7, 1.0] + [0.8] * 16  # 20 finite: the worst 10% are two
    assert worst_share_mean(values) == pytest.approx(0.6)
    assert mean_finite([float("nan")]) is None and worst_share_mean([]) is None
    assert mean_finite([0.5, None, 1.0]) == 0.75


def test_impossible_combinations_are_explained():
    base = FederationConfig(**TINY)
    assert base.with_changes(personalize="fedper").problems() == []
    assert "SCAFFOLD" in " ".join(base.with_changes(personalize="fedper", strategy="scaffold", optimizer="sgd",
                                                    learning_rate=0.05).problems())
    assert "asynchronous" in " ".join(base.with_changes(personalize="finetune", strategy="fedbuff").problems())
    diverging = base.with_changes(personalize="ditto", optimizer="sgd", learning_rate=0.5, ditto_lambda=5.0)
    assert "diverges" in " ".join(diverging.problems())


def test_old_run_indexes_gain_the_personalisation_columns(tmp_path):
    from engine.store import RunStore

    with sqlite3.connect(tmp_path / "runs.sqlite") as db:  # the device table as older versions made it
        db.execute("CREATE TABLE device_rounds (run_id TEXT NOT NULL, round INTEGER NOT NULL, device_id INTEGER "
                   "NOT NULL, samples INTEGER NOT NULL, accuracy REAL, loss REAL, PRIMARY KEY (run_id, round, "
                   "device_id))")
        db.execute("INSERT INTO device_rounds VALUES ('old', 1, 0, 10, 0.5, 1.0)")
    RunStore(tmp_path)
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(device_rounds)")]
        assert columns[-2:] == ["received_accuracy", "personalized_accuracy"]
        assert db.execute("SELECT personalized_accuracy FROM device_rounds").fetchall() == [(None,)]


# -- tiny real runs ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(fashion, tmp_path_factory):
    """One finished 2-round run per mode (fedper's recorded in a run store), as (federation, snapshot)."""
    from engine.federation import Federation
    from engine.store import RunStore
    from tests.conftest import run_to_finish

    store = RunStore(tmp_path_factory.mktemp("personal-runs"))
    done = {}
    for mode, extra in (("finetune", {}), ("fedper", {"stack_width": 1}), ("ditto", {})):
        federation = Federation(FederationConfig(**TINY, personalize=mode, **extra), dataset=fashion,
                                store=store if mode == "fedper" else None)
        done[mode] = (federation, run_to_finish(federation))
    yield done
    for federation, _ in done.values():
        federation.close()


@pytest.mark.parametrize("mode", ["finetune", "fedper", "ditto"])
def test_each_mode_learns_and_beats_the_global_model_on_skewed_devices(runs, mode):
    _, snapshot = runs[mode]
    last = snapshot.history[-1]
    assert last.personalized_accuracy > 0.6, last
    assert last.personalized_accuracy > last.device_global_accuracy + 0.15
    assert all(np.isfinite(d.personalized_accuracy) for d in last.devices)


def test_every_round_line_of_json_carries_personalized_accuracy(runs):
    from engine.cli_output import round_json

    for result in runs["finetune"][1].history:
        line = json.loads(json.dumps(round_json(result)))
        assert line["personalized_accuracy"] == pytest.approx(
            np.mean([d["personalized_accuracy"] for d in line["devices"]]))
        assert 0 <= line["device_global_accuracy"] < line["personalized_accuracy"] <= 1


def test_fedpers_head_never_leaves_the_device(runs):
    import copy

    from devices.codec import decode_delta
    from devices.trainer import ModelReplica, OptimizerSpec
    from engine.setup import sample_spec
    from engine.models import ModelRegistry

    federation, _ = runs["fedper"]
    weights = federation.global_weights
    instructions = federation._runner.instructions(3, 0, weights, None)
    device = copy.deepcopy(federation.devices[0])
    head_before = [h.copy() for h in device.head]
    replica = ModelReplica(lambda: ModelRegistry().build("mlp", federation.dataset.input_shape, 10),
                           OptimizerSpec("adam"), samples=sample_spec(federation.dataset))
    sent = device.respond(instructions, replica, lambda steps: None)
    head = instructions.personal.head
    assert [d.shape for d in decode_delta(sent.payload)] == [w.shape for i, w in enumerate(weights) if i not in head]
    assert sent.nbytes < sum(w.nbytes for w in weights)
    assert not any(np.array_equal(a, b) for a, b in zip(head_before, device.head))  # trained, and kept
    for other in federation.devices:  # the server's head is its own: no device's head reached it
        assert not any(np.array_equal(weights[p], h) for p, h in zip(head, other.head))


def test_a_resumed_run_keeps_every_devices_fedper_head(runs, fashion):
    from engine.federation import Federation

    federation, _ = runs["fedper"]
    heads = {d.device_id: d.head for d in federation.devices}
    resumed = Federation.reopen(federation.store, federation.run_id, more_rounds=1, dataset=fashion)
    try:
        for device in resumed.devices:
            assert all(np.array_equal(a, b) for a, b in zip(device.head, heads[device.device_id]))
        rows = federation.store.device_personalization(federation.run_id)
        assert len(rows) == 8 and all(r[3] is not None and 0 <= r[3] <= 1 for r in rows)
    finally:
        resumed.close()


def test_ditto_with_a_large_lambda_matches_the_global_model(fashion, make_federation):
    from tests.conftest import run_to_finish

    # SGD with lr x lambda = 1: each step lands on w - lr g(v), so v stays within g/1000 of the global model w,
    # while the same 8 epochs without the pull (the update each device sends) move far from it
    federation = make_federation(**{**TINY, "personalize": "ditto", "ditto_lambda": 1000.0, "optimizer": "sgd",
                                    "learning_rate": 0.001, "momentum": 0.0, "local_epochs": 8})
    for result in run_to_finish(federation).history:
        trained = np.mean([d.accuracy for d in result.devices])
        assert trained > result.device_global_accuracy + 0.1, result  # an ignored lambda would show
        assert abs(result.personalized_accuracy - result.device_global_accuracy) < 0.05, result


def test_stacked_and_one_by_one_personalisation_agree(runs, fashion):
    """The vectorised ditto (personal models and their accuracies) equals training each device alone."""
    import copy

    from devices.cohort import train_cohort
    from devices.stacked import StackedReplica
    from devices.trainer import ModelReplica, OptimizerSpec
    from engine.setup import sample_spec
    from engine.models import ModelRegistry

    federation, _ = runs["ditto"]
    instructions = [federation._runner.instructions(3, d.device_id, federation.global_weights, None)
                    for d in federation.devices[:2]]
    alone = [copy.deepcopy(d) for d in federation.devices[:2]]
    stacked = [copy.deepcopy(d) for d in federation.devices[:2]]
    build = lambda: ModelRegistry().build("mlp", fashion.input_shape, 10)  # noqa: E731
    replica = ModelReplica(build, OptimizerSpec("adam"), samples=sample_spec(fashion))
    singles = [d.respond(i, replica, lambda s: None) for d, i in zip(alone, instructions)]
    stack = StackedReplica(build, OptimizerSpec("adam"), 2, samples=sample_spec(fashion))
    together = train_cohort(stacked, instructions, stack, [lambda s: None] * 2)
    for one, other, a, b in zip(singles, together, alone, stacked):
        assert one.metrics.personalized_accuracy == pytest.approx(other.metrics.personalized_accuracy, abs=0.02)
        for x, y in zip(a.personal_model, b.personal_model):
            np.testing.assert_allclose(x, y, atol=2e-3)


def render_recorded_curves(runs_dir: str, run_id: str) -> None:
    from app import results_view
    from engine.store import RunStore

    results_view.render_history_curves(RunStore(runs_dir).load_history(run_id), prefix="run_")


def test_the_dashboard_draws_the_distribution_across_devices(runs):
    from streamlit.testing.v1 import AppTest

    federation, snapshot = runs["fedper"]
    at = AppTest.from_function(render_recorded_curves, args=(str(federation.store.root), federation.run_id),
                               default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    charts = {e.key: json.loads(e.proto.spec) for e in at.get("plotly_chart")}
    distribution = charts["run_personal_distribution"]
    boxes = [t for t in distribution["data"] if t["type"] == "box"]
    assert [b["name"] for b in boxes] == ["global model", "personalised"]
    assert "worst 10%" in distribution["layout"]["title"]["text"]
    assert "run_personal_fairness" in charts
    dashed = [t for t in charts["run_device_accuracy"]["data"] if t.get("line", {}).get("dash") == "dash"]
    assert len(dashed) == 4  # one personalised line per device
