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
