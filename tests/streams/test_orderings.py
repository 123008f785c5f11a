"""Label orderings (docs/reference/stream_algorithms.md), tested on label arrays alone."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tta_streams.orderings import (
    dirichlet_chunks,
    dirichlet_order,
    label_stats,
    order_indices,
    parse_order,
    slots_order,
    sorted_order,
)

ORDERS = ["iid", "sorted", "dirichlet:0.1", "dirichlet:1", "slots:0.1", "dirichlet_slots:1"]


def balanced_labels(n_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(n_classes), per_class))


@settings(max_examples=25, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=200).map(np.array),
    order=st.sampled_from(["iid", "sorted", "slots:0.5", "slots:0.01"]),
    seed=st.integers(0, 2**32),
)
def test_every_order_visits_every_index_exactly_once(labels, order, seed):
    perm = order_indices(labels, order, np.random.default_rng(seed))
    assert np.array_equal(np.sort(perm), np.arange(len(labels)))


@pytest.mark.parametrize("order", ORDERS)
def test_orders_are_permutations_on_realistic_labels(order):
    labels = balanced_labels(10, 100)
    perm = order_indices(labels, order, np.random.default_rng(3))
    assert np.array_equal(np.sort(perm), np.arange(len(labels)))


def test_same_generator_seed_gives_same_order_and_other_seeds_differ():
    labels = balanced_labels(10, 50)
    for order in ORDERS:
        a = order_indices(labels, order, np.random.default_rng(1))
        b = order_indices(labels, order, np.random.default_rng(1))
        c = order_indices(labels, order, np.random.default_rng(2))
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)


def test_dirichlet_chunks_are_balanced_as_in_note():
    # NOTE zeroes the proportion of a chunk once it holds >= N / n_chunks samples, so every chunk was
    # below that cap before its last piece arrived; pieces arrive in ascending class order.
    labels = balanced_labels(10, 200)
    cap = len(labels) / 10
    for seed in range(5):
        chunks = dirichlet_chunks(labels, 0.1, np.random.default_rng(seed))
        assert len(chunks) == 10
        for pieces in chunks:
            last = max(pieces, key=lambda piece: labels[piece[0]])
            assert sum(map(len, pieces)) - len(last) < cap
            assert sum(map(len, pieces)) >= 10
        all_indices = np.concatenate([p for pieces in chunks for p in pieces])
        assert np.array_equal(np.sort(all_indices), np.arange(len(labels)))


def test_dirichlet_with_huge_delta_splits_each_class_evenly_over_chunks():
    # Dir(delta * 1) concentrates on the uniform vector as delta grows: each class is cut into
    # n_chunks (almost) equal pieces, one per chunk, and no chunk fills before the last class.
    labels = balanced_labels(5, 100)
    chunks = dirichlet_chunks(labels, 1e7, np.random.default_rng(0))
    for pieces in chunks:
        assert sorted(int(labels[p[0]]) for p in pieces) == [0, 1, 2, 3, 4]
        assert all(abs(len(p) - 20) <= 1 for p in pieces)


def test_dirichlet_order_emits_chunks_with_contiguous_class_runs():
    labels = balanced_labels(10, 100)
    chunks = dirichlet_chunks(labels, 0.5, np.random.default_rng(7))
    order = dirichlet_order(labels, 0.5, np.random.default_rng(7))  # same draws, then the emission
    start = 0
    for pieces in chunks:
        size = sum(map(len, pieces))
        segment = order[start : start + size]
        start += size
        assert set(segment.tolist()) == set(np.concatenate(pieces).tolist())
        seq = labels[segment]
        runs = 1 + int(np.count_nonzero(seq[1:] != seq[:-1]))
        assert runs == len(np.unique(seq))  # each class one contiguous run inside the chunk
    assert start == len(labels)


def test_smaller_delta_gives_more_label_correlation():
    labels = balanced_labels(10, 300)

    def mean_stats(order):
        stats = [label_stats(labels[order_indices(labels, order, np.random.default_rng(s))], 64) for s in range(3)]
        return np.mean([s.mean_distinct_labels for s in stats]), np.mean([s.mean_tv_distance for s in stats])

    distinct = {}
    tv = {}
    for order in ["iid", "dirichlet:10", "dirichlet:0.1", "dirichlet:0.001", "sorted"]:
        distinct[order], tv[order] = mean_stats(order)
    assert distinct["iid"] > distinct["dirichlet:10"] > distinct["dirichlet:0.1"] > distinct["dirichlet:0.001"]
    assert distinct["dirichlet:0.001"] >= distinct["sorted"]
    assert tv["iid"] < tv["dirichlet:10"] < tv["dirichlet:0.1"] < tv["dirichlet:0.001"]


def test_sorted_is_sorted_and_random_inside_each_class():
    labels = balanced_labels(4, 50)
    a = sorted_order(labels, np.random.default_rng(0))
    b = sorted_order(labels, np.random.default_rng(1))
    assert np.all(np.diff(labels[a]) >= 0)
    assert np.array_equal(labels[a], labels[b]) and not np.array_equal(a, b)


def test_slots_order_uses_one_slot_per_class_up_to_100():
    labels = balanced_labels(3, 100)
    perm = slots_order(labels, 1e7, np.random.default_rng(0))
    # with a huge gamma each class is split evenly over 3 slots: every third of the stream holds
    # (about) a third of each class
    for third in np.split(labels[perm], 3):
        assert np.all(np.abs(np.bincount(third, minlength=3) - 33) <= 2)


def test_dirichlet_retry_bound_gives_clear_error_when_no_draw_balances():
    # 19 samples of class 0 and 1 of class 1 in 2 chunks of >= 10: only a split of class 0 into 9/10
    # or 10/9 works, which Dir(0.001) (almost always a 0/19 split) essentially never draws.
    labels = np.array([0] * 19 + [1])
    with pytest.raises(ValueError, match=r"at least 10 samples in 20 tries"):
        dirichlet_order(labels, 0.001, np.random.default_rng(0), max_tries=20)


def test_dirichlet_request_with_too_few_samples_fails_at_once():
    labels = balanced_labels(10, 5)  # 50 samples cannot give 10 chunks of >= 10
    with pytest.raises(ValueError, match=r"50 samples cannot fill 10 chunks.*at least 100 are needed"):
        dirichlet_order(labels, 0.1, np.random.default_rng(0))


@pytest.mark.parametrize(
    "text, message",
    [
        ("dirichlet:0", "positive"),
        ("dirichlet:-0.5", "positive"),
        ("dirichlet:nan", "positive"),
        ("dirichlet:abc", "not a number"),
        ("slots:0", "positive"),
        ("dirichlet", "unknown order"),
        ("shuffled", "unknown order"),
        ("iid:3", "unknown order"),
    ],
)
def test_bad_order_names_and_concentrations_are_clear_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_order(text)


def test_parse_order_canonical_forms():
    assert str(parse_order("dirichlet:0.10")) == "dirichlet:0.1"
    assert parse_order("dirichlet_slots:0.1") == parse_order("slots:0.1")


def test_label_stats_by_hand():
    s = label_stats(np.array([0, 0, 1, 1]), 2)  # batches {0,0}, {1,1}; domain (1/2, 1/2)
    assert (s.mean_distinct_labels, s.mean_tv_distance, s.n_batches) == (1.0, 0.5, 2)
    s = label_stats(np.array([0, 1, 0, 1]), 2)
    assert (s.mean_distinct_labels, s.mean_tv_distance) == (2.0, 0.0)
    # last short batch kept: [0, 1], [0]; domain (2/3, 1/3); TV 1/6 and 1/3
    s = label_stats(np.array([0, 1, 0]), 2)
    assert s.n_batches == 2 and s.mean_distinct_labels == 1.5
    assert s.mean_tv_distance == pytest.approx((1 / 6 + 1 / 3) / 2)
