"""Long-tailed class priors (``imbalanced:<IF>[:random][+order]``), tested on label arrays alone."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tta_streams
from tta_streams.orderings import imbalanced_subset, label_stats, long_tail_counts, order_indices, parse_order


def balanced_labels(n_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(n_classes), per_class))


def test_long_tail_counts_are_geometric_from_head_to_tail():
    # TRIBE's gen_imbalanced_data on the Fashion-MNIST test labels (1,000 per class), IF 100 and 10, recorded
    # by /work/scratch/imbalance/compare.py gli (the official class histogram, identical over 10 seeds)
    assert long_tail_counts(1000, 10, 100).tolist() == [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]
    assert long_tail_counts(1000, 10, 10).tolist() == [1000, 774, 599, 464, 359, 278, 215, 166, 129, 100]
    # by hand: ratio IF ** (1 / (K - 1)) between neighbours; IF 1 keeps everything; one class keeps n_max
    assert long_tail_counts(80, 3, 4).tolist() == [80, 40, 20]
    assert long_tail_counts(7, 4, 1).tolist() == [7, 7, 7, 7]
    assert long_tail_counts(5, 1, 10).tolist() == [5]


def test_fixed_ranking_keeps_the_long_tailed_counts_with_class_zero_the_head():
    labels = balanced_labels(5, 200)
    for seed in range(3):
        kept = imbalanced_subset(labels, 16, seed)
        assert len(np.unique(kept)) == len(kept)  # a selection, no repeats
        assert np.bincount(labels[kept]).tolist() == [200, 100, 50, 25, 12]


def test_the_smallest_class_sets_the_head_size():
    labels = np.concatenate([np.repeat(0, 300), np.repeat(1, 100), np.repeat(2, 500)])
    kept = imbalanced_subset(labels, 4, 0)
    assert np.bincount(labels[kept]).tolist() == [100, 50, 25]


def test_random_ranking_draws_which_class_is_the_head_from_the_seed():
    labels = balanced_labels(5, 200)
    heads = set()
    for seed in range(12):
        counts = np.bincount(labels[imbalanced_subset(labels, 16, seed, ranking="random")], minlength=5)
        assert sorted(counts.tolist(), reverse=True) == [200, 100, 50, 25, 12]
        heads.add(int(np.argmax(counts)))
    assert len(heads) >= 3  # 12 draws of the head among 5 classes


def test_kept_images_are_a_uniform_subset_of_each_class():
    # over many seeds every image of the tail class is kept about 12/200 of the time
    labels = balanced_labels(5, 200)
    tail = np.flatnonzero(labels == 4)
    hits = np.zeros(len(labels))
    for seed in range(300):
        hits[imbalanced_subset(labels, 16, seed)] += 1
    rate = hits[tail] / 300
    assert abs(rate.mean() - 12 / 200) < 1e-9
    assert rate.max() < 0.2  # no image always kept (sd of one image's rate ~ 0.014)


def test_an_imbalance_whose_tail_would_be_empty_is_a_clear_error():
    labels = balanced_labels(10, 50)
    with pytest.raises(ValueError, match=r"tail class would keep no image.*smallest class has 50.*at least 100"):
        order_indices(labels, "imbalanced:100", 0)


@pytest.mark.parametrize("order", ["imbalanced:10", "imbalanced:10+sorted", "imbalanced:10:random+dirichlet:0.1"])
def test_an_imbalanced_order_orders_the_kept_images_by_its_base_order(order):
    labels = balanced_labels(10, 300)
    visited = order_indices(labels, order, 3)
    assert len(np.unique(visited)) == len(visited)
    assert sorted(np.bincount(labels[visited]).tolist(), reverse=True) == long_tail_counts(300, 10, 10).tolist()
    stats = label_stats(labels[visited], 64)
    assert stats.imbalance_ratio == 10
    if order.endswith("sorted"):
        assert np.all(np.diff(labels[visited]) >= 0)
    else:  # iid keeps about sum(p_k^2) of consecutive pairs in one class; dirichlet:0.1 runs of a class
        expected_iid = float(np.sum((long_tail_counts(300, 10, 10) / len(visited)) ** 2))
        if "dirichlet" in order:
            assert stats.same_label_rate > 0.8
        else:
            assert abs(stats.same_label_rate - expected_iid) < 0.05


def test_gli_tta_matches_tribes_official_sampler():
    # TRIBE's LabelDirichletDomainSequenceLongTailed(gamma 0.1, IF 100, "constant") on the Fashion-MNIST test
    # labels, 10 seeds (/work/scratch/imbalance/compare.py gli): 2,478 images, P(same class) 0.982 +- 0.001,
    # mean class run 55.4; ours is imbalanced:100+slots:0.1
    labels = tta_streams.fashion_mnist().labels.numpy().astype(np.int64)
    rates, runs = [], []
    for seed in range(10):
        visited = order_indices(labels, "imbalanced:100+slots:0.1", seed)
        assert len(visited) == 2478
        stats = label_stats(labels[visited], 64)
        rates.append(stats.same_label_rate)
        runs.append(stats.mean_run_length)
    assert abs(np.mean(rates) - 0.982) < 0.004
    assert abs(np.mean(runs) - 55.4) < 6


@settings(max_examples=60, deadline=None)
@given(
    imbalance=st.floats(1, 1e6, allow_nan=False) | st.integers(1, 1000),
    ranking=st.sampled_from(["", ":random"]),
    base=st.sampled_from(["", "+iid", "+sorted", "+dirichlet:0.1", "+slots:2.5", "+dirichlet_slots:1e-3"]),
)
def test_imbalanced_spellings_round_trip(imbalance, ranking, base):
    parsed = parse_order(f"imbalanced:{imbalance}{ranking}{base}")
    assert parse_order(str(parsed)) == parsed
    assert str(parse_order(str(parsed))) == str(parsed)
    assert parsed.imbalance == float(imbalance) and parsed.ranking == ("random" if ranking else "fixed")


def test_canonical_imbalanced_spellings():
    assert str(parse_order("imbalanced:100.0")) == "imbalanced:100"
    assert str(parse_order(" imbalanced:100 + iid ")) == "imbalanced:100"
    assert str(parse_order("imbalanced:2.50:random+dirichlet_slots:0.10")) == "imbalanced:2.5:random+slots:0.1"


@pytest.mark.parametrize(
    "text, message",
    [
        ("imbalanced:0.5", "finite number >= 1"),
        ("imbalanced:inf", "finite number >= 1"),
        ("imbalanced:nan", "finite number >= 1"),
        ("imbalanced:x", "number >= 1"),
        ("imbalanced", "imbalanced:<IF>"),
        ("imbalanced:10:shuffled", "imbalanced:<IF>:random"),
        ("imbalanced:10+", "nothing after"),
        ("imbalanced:10+imbalanced:5", "one imbalance prefix"),
        ("imbalanced:10+slots:0.1+iid", "one imbalance prefix"),
        ("slots:0.1+imbalanced:10", "written first"),
        ("imbalanced:10+dirichlet:0", "positive"),
        ("imbalanced:10+shuffled", "unknown order"),
    ],
)
def test_bad_imbalanced_spellings_are_clear_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_order(text)


def test_a_stream_with_an_imbalanced_order_is_long_tailed_in_every_domain(tmp_path):
    stream = tta_streams.Stream(
        "fmnist",
        corruptions=["fog", "snow"],
        order="imbalanced:10+dirichlet:0.1",
        setting="continual",
        n_examples=2000,
        batch_size=50,
        cache_dir=tmp_path,
    )
    assert str(stream.order) == "imbalanced:10+dirichlet:0.1" and "imbalanced:10+dirichlet:0.1" in repr(stream)
    # the first 2,000 Fashion-MNIST test images hold 188 of their smallest class
    expected = long_tail_counts(188, 10, 10)
    assert stream.label_stats().imbalance_ratio == pytest.approx(expected[0] / expected[-1])
    assert len(stream) == 2 * -(-int(expected.sum()) // 50)


SCRIPT = """
import numpy as np, sys
from tta_streams.orderings import order_indices
labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 300))
sys.stdout.write(",".join(map(str, order_indices(labels, "imbalanced:20:random+dirichlet:0.1", 7)[:200])))
"""


def test_an_imbalanced_order_is_the_same_in_a_new_process():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 300))
    here = order_indices(labels, "imbalanced:20:random+dirichlet:0.1", 7)[:200]
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    assert out == ",".join(map(str, here))
