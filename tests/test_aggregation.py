import numpy as np
import pytest

from devices.messages import DeviceMetrics, DeviceUpdate
from engine.aggregation import update_problem, weighted_average
from engine.strategies import FedAvg


def test_weighted_average_is_the_exact_sample_weighted_mean():
    a = [np.array([[1.0, 2.0]], np.float32), np.array([0.0], np.float32)]
    b = [np.array([[3.0, 6.0]], np.float32), np.array([4.0], np.float32)]
    result = weighted_average([a, b], [1, 3])
    np.testing.assert_allclose(result[0], [[2.5, 5.0]])
    np.testing.assert_allclose(result[1], [3.0])
    assert result[0].dtype == np.float32


def test_coefficients_need_not_sum_to_one():
    a, b = [np.array([2.0])], [np.array([8.0])]
    np.testing.assert_allclose(weighted_average([a, b], [10, 30])[0], weighted_average([a, b], [0.25, 0.75])[0])
    np.testing.assert_allclose(weighted_average([a, b], [10, 30])[0], [6.5])


def test_single_device_returns_its_weights():
    weights = [np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)]
    np.testing.assert_array_equal(weighted_average([weights], [7])[0], weights[0])


@pytest.mark.parametrize("coefficients", [[], [0, 0], [-1, 2], [1]])
def test_bad_coefficients_are_refused(coefficients):
    a = [np.zeros(2)]
    with pytest.raises(ValueError):
        weighted_average([a, a] if coefficients != [] else [], coefficients)


def test_fedavg_weights_by_sample_count():
    metrics = DeviceMetrics(0, 0, 0, 0, 0, 0, 0, 0)
    updates = [
        DeviceUpdate(0, [np.array([0.0])], 100, metrics),
        DeviceUpdate(1, [np.array([1.0])], 300, metrics),
    ]
    np.testing.assert_allclose(FedAvg().aggregate(1, [np.array([5.0])], updates)[0], [0.75])


def test_update_problem_names_shape_count_and_non_finite_values():
    reference = [np.zeros((2, 2)), np.zeros(2)]
    assert update_problem([np.ones((2, 2)), np.ones(2)], reference) is None
    assert "shape" in update_problem([np.ones((2, 3)), np.ones(2)], reference)
    assert "1 weight arrays" in update_problem([np.ones((2, 2))], reference)
    assert "NaN or Inf" in update_problem([np.ones((2, 2)), np.array([1.0, np.inf])], reference)
    assert "NaN or Inf" in update_problem([np.full((2, 2), np.nan), np.ones(2)], reference)


def test_mean_delta_accumulated_in_place_equals_the_weighted_average():
    from engine.aggregation import RunningMean

    rng = np.random.default_rng(3)
    deltas = [[rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)] for _ in range(5)]
    coefficients = [10.0, 0.0, 3.0, 7.0, 1.0]
    mean = RunningMean(deltas[0])
    for delta, coefficient in zip(deltas, coefficients):
        mean.add(delta, coefficient)
    assert mean.count == 5 and mean.total == 21.0
    for got, want in zip(mean.mean(), weighted_average(deltas, coefficients)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="nothing to average"):
        RunningMean(deltas[0]).mean()
    with pytest.raises(ValueError, match="non-negative"):
        mean.add(deltas[0], -1.0)


def test_the_running_mean_of_encoded_updates_equals_the_weighted_average_of_their_models_exactly():
    """The round's in-place path (decode each update into one scratch model, add it to a running sum) gives
    bit for bit what decoding every model and averaging them gives, and rejects what decoding rejects."""
    from devices.codec import encode_delta
    from devices.messages import EncodedUpdate
    from engine.transport_checks import decode_update, mean_of_updates

    rng = np.random.default_rng(5)
    reference = [rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
    m = DeviceMetrics(0.5, 0.8, 0.6, 0.5, 0.4, 0.9, 2, 0.1)

    def encoded(device_id, samples, method, delta):
        return EncodedUpdate(device_id, samples, m, payload=encode_delta(delta, method, 0.5)[0])

    updates = [encoded(d, 10 + 7 * d, method, [rng.normal(size=w.shape).astype(np.float32) for w in reference])
               for d, method in enumerate(["none", "q8", "none", "topk", "q4"])]
    updates.insert(2, encoded(9, 50, "none", [np.full((5, 4), np.nan, np.float32), np.zeros(4, np.float32)]))
    updates.append(EncodedUpdate(11, 5, m, payload=b"\x00garbage"))
    mean, accepted, rejected = mean_of_updates(updates, reference, lambda u: float(u.num_samples))
    assert [u.device_id for u in accepted] == [0, 1, 2, 3, 4]
    assert [(u.device_id, "NaN" in why or "malformed" in why) for u, why in rejected] == [(9, True), (11, True)]
    models = [decode_update(u, reference)[0] for u in accepted]
    expected = weighted_average(models, [u.num_samples for u in accepted])
    for got, want in zip(mean, expected):
        assert got.dtype == want.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    assert mean_of_updates(updates[2:3], reference, lambda u: 1.0)[0] is None


def test_only_strategies_that_use_the_weighted_mean_alone_take_the_running_mean_path():
    from types import SimpleNamespace

    from engine.composition import build_aggregation
    from engine.strategies import build_strategy

    def config(clip=None, noise=0.0, local=0.0):
        return SimpleNamespace(clip_norm=clip, noise_multiplier=noise, local_noise_multiplier=local, dp_delta=1e-5,
                               seed=0)

    averages = {name: build_aggregation(build_strategy(name, {}), config()).averages
                for name in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedmedian", "krum", "fednova", "scaffold")}
    assert averages == {"fedavg": True, "fedprox": True, "fedavgm": True, "fedadam": True, "fedmedian": False,
                        "krum": False, "fednova": False, "scaffold": False}
    update = SimpleNamespace(num_samples=40)
    assert build_aggregation(build_strategy("fedavg", {}), config(clip=1.0)).coefficient(update) == 40.0
    noisy = build_aggregation(build_strategy("fedavg", {}), config(clip=1.0, noise=1.0))
    assert noisy.averages and noisy.coefficient(update) == 1.0
    assert not build_aggregation(build_strategy("fedmedian", {}), config(clip=1.0, local=0.5)).averages
