"""Mixed precision (float32 on the wire, bfloat16 compute) and evaluating the server's model on a sample."""

import numpy as np
import pytest

from devices.precision import in_precision
from engine.evaluation import RoundTestSets, ServerTestSet, evaluates_everything, evaluation_sample, warm_up_samples
from engine.precision import precision_note, resolve_precision


def test_auto_picks_bfloat16_only_where_the_cpu_has_it():
    assert resolve_precision("auto", native_bf16=True).precision == "bfloat16"
    assert resolve_precision("auto", native_bf16=False).precision == "float32"
    assert resolve_precision("float32", native_bf16=True).precision == "float32"
    emulated = resolve_precision("bfloat16", native_bf16=False)
    assert emulated.precision == "bfloat16" and "slower" in emulated.reason
    assert "float32 master weights" in precision_note(resolve_precision("auto", True))
    with pytest.raises(ValueError, match="auto, float32, bfloat16, got .float16."):
        resolve_precision("float16", True)


def test_a_mixed_precision_model_keeps_float32_weights_and_computes_in_bfloat16():
    from engine.models import ModelRegistry

    model = ModelRegistry().build("cnn", (28, 28, 1), 10)
    mixed = in_precision(model, "bfloat16")
    assert {w.dtype for w in mixed.weights} == {"float32"}
    assert {layer.compute_dtype for layer in mixed.layers} == {"bfloat16"}
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), mixed.get_weights()))
    assert in_precision(model, "float32") is model


@pytest.mark.parametrize("stack_width", [4, 1])
def test_bfloat16_training_exchanges_float32_and_learns_like_float32(make_federation, stack_width):
    results = {}
    for precision in ("float32", "bfloat16"):
        federation = make_federation(precision=precision, stack_width=stack_width)
        assert precision in federation.training_note
        snapshot = federation.run_to_end()
        assert snapshot.status.value == "finished", snapshot.message
        assert {w.dtype for w in federation.global_weights} == {np.dtype("float32")}
        results[precision] = snapshot.history[-1].global_accuracy
    assert results["bfloat16"] > 0.6
    assert results["bfloat16"] == pytest.approx(results["float32"], abs=0.03)


def test_the_evaluation_sample_is_fixed_and_the_full_set_comes_every_k_rounds_and_last():
    test = ServerTestSet(np.arange(100).reshape(100, 1, 1), np.arange(100) % 10, 10)
    assert evaluation_sample(100, None, 0) is None and evaluation_sample(100, 100, 0) is None
    sample = evaluation_sample(100, 30, seed=5)
    assert len(set(sample)) == 30 and np.array_equal(sample, evaluation_sample(100, 30, seed=5))
    sets = RoundTestSets.of(test, 30, full_eval_every=4, seed=5)
    assert [len(sets.for_round(r, last=False).y) for r in (1, 2, 3, 4, 5)] == [30, 30, 30, 100, 30]
    assert len(sets.for_round(5, last=True).y) == 100
    assert evaluates_everything(7, last=True, full_eval_every=10)
    assert RoundTestSets.of(test, None, 4, 0).for_round(1, False) is test


@pytest.mark.parametrize("num_test", [1, 500, 2048, 2049, 4096, 10_000])
def test_the_warm_up_evaluates_every_batch_shape_of_the_whole_test_set_and_no_more(num_test):
    def batch_sizes(n, batch=2048):
        return {min(batch, n - start) for start in range(0, n, batch)}

    warm = warm_up_samples(num_test, 2048)
    assert batch_sizes(warm) == batch_sizes(num_test) and warm <= min(num_test, 2 * 2048)


def test_rounds_record_how_many_test_samples_they_used(make_federation):
    snapshot = make_federation(eval_samples=200, full_eval_every=2, rounds=3).run_to_end()
    assert [r.test_samples for r in snapshot.history] == [200, 1000, 1000]
    assert [int(r.confusion.sum()) for r in snapshot.history] == [200, 1000, 1000]


def test_impossible_evaluation_and_precision_settings_are_explained():
    from engine.config import ConfigError, FederationConfig

    with pytest.raises(ConfigError) as error:
        FederationConfig(eval_samples=0, full_eval_every=0, precision="half").validate()
    text = str(error.value)
    assert "evaluated per round" in text and "Full test-set evaluation" in text and "'half'" in text
