import numpy as np
import pytest

from data.partition import PartitionSpec, label_histogram, partition, split_local_test

SPECS = [
    PartitionSpec("iid"),
    PartitionSpec("dirichlet", alpha=0.5),
    PartitionSpec("dirichlet", alpha=0.05),
    PartitionSpec("shards", shards_per_device=2),
    PartitionSpec("quantity", quantity_alpha=0.5),
]


@pytest.fixture(scope="module")
def labels(fashion):
    return fashion.y_train[:12_000]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.scheme}")
def test_partitions_are_disjoint_complete_and_deterministic(labels, spec):
    parts = partition(labels, 20, spec, seed=3)
    assert len(parts) == 20
    everything = np.concatenate(parts)
    assert len(everything) == len(labels)  # complete ...
    assert len(np.unique(everything)) == len(labels)  # ... and disjoint
    assert all(len(p) > 0 for p in parts)
    again = partition(labels, 20, spec, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(labels, 20, spec, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def _classes_for_most_data(histogram: np.ndarray, share: float = 0.9) -> np.ndarray:
    """How many classes hold ``share`` of each device's samples."""
    ordered = -np.sort(-histogram, axis=1)
    cumulative = np.cumsum(ordered, axis=1) / ordered.sum(axis=1, keepdims=True)
    return (cumulative < share).sum(axis=1) + 1


def test_small_alpha_gives_label_skew_and_iid_does_not(labels):
    iid = label_histogram([labels[p] for p in partition(labels, 10, PartitionSpec("iid"), 0)], 10)
    skewed = label_histogram([labels[p] for p in partition(labels, 10, PartitionSpec("dirichlet", 0.1), 0)], 10)
    assert _classes_for_most_data(iid).min() >= 9
    assert np.median(_classes_for_most_data(skewed)) <= 4
    larger_alpha = label_histogram([labels[p] for p in partition(labels, 10, PartitionSpec("dirichlet", 100), 0)], 10)
    assert np.median(_classes_for_most_data(larger_alpha)) >= 8


def test_shards_give_each_device_at_most_k_dominant_labels(labels):
    parts = partition(labels, 10, PartitionSpec("shards", shards_per_device=2), 0)
    for part in parts:
        # a shard may straddle a label boundary, so allow one extra label per shard
        assert len(np.unique(labels[part])) <= 4
        assert _classes_for_most_data(np.bincount(labels[part], minlength=10)[None])[0] <= 2


def test_quantity_skew_gives_unequal_sizes_with_iid_content(labels):
    parts = partition(labels, 10, PartitionSpec("quantity", quantity_alpha=0.5), 0)
    sizes = np.array([len(p) for p in parts])
    assert sizes.max() > 3 * sizes.min()
    biggest = parts[int(np.argmax(sizes))]
    assert len(np.unique(labels[biggest])) == 10


def test_impossible_requests_are_explained(labels):
    with pytest.raises(ValueError, match="cannot split"):
        partition(labels[:5], 10, PartitionSpec("iid"), 0)
    with pytest.raises(ValueError, match="unknown partition"):
        partition(labels, 10, PartitionSpec("zigzag"), 0)


def test_local_test_split_holds_out_a_fraction_without_overlap():
    rng = np.random.default_rng(0)
    train, test = split_local_test(np.arange(100, 200), 0.1, rng)
    assert len(test) == 10 and len(train) == 90
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(range(100, 200))
    train, test = split_local_test(np.arange(3), 0.1, rng)
    assert len(test) == 1 and len(train) == 2


def test_label_histogram_counts_each_class_per_device():
    histogram = label_histogram([np.array([0, 0, 2]), np.array([1])], 3)
    np.testing.assert_array_equal(histogram, [[2, 0, 1], [0, 1, 0]])
