"""UniTTA's Markov-chain streams (the ``unitta:<spec>`` setting), tested on label arrays alone."""

import subprocess
import sys

import numpy as np
import pytest

import tta_streams
from tta_streams.markov import UniTTA, chain_factors, parse_unitta, unitta_indices
from tta_streams.settings import parse_setting, plan


def transition(stay: np.ndarray) -> np.ndarray:
    """The attribute's transition matrix written from UniTTA's definition: stay, else uniform."""
    n = len(stay)
    matrix = np.tile(((1 - stay) / (n - 1))[:, None], (1, n))
    np.fill_diagonal(matrix, stay)
    return matrix


def fmnist_pool(per_domain: int = 2000, n_domains: int = 15) -> tuple[np.ndarray, np.ndarray]:
    labels = tta_streams.fashion_mnist().labels.numpy().astype(np.int64)[:per_domain]
    return np.repeat(np.arange(n_domains), per_domain), np.tile(labels, n_domains)


@pytest.mark.parametrize(("cor", "imbalance", "n", "consistent"), [
    (0.95, 10, 10, True),     # 0.05 * 10 = 0.5 <= 0.9
    (0.85, 5, 15, True),      # 0.75 <= 14/15
    (0.1, 10, 10, False),     # 9 > 0.9: the i.i.d. class chain cannot make an imbalance of 10
    ("i", 1, 10, True),       # equality: 0.9 <= 0.9
    (0.05, 1, 10, False),     # 0.95 > 0.9: below the i.i.d. value 1/10, anti-correlated
    (1.0, 1, 15, False),      # correlation 1: never leaves a state, quotas decide
])  # fmt: skip
def test_unittas_consistency_constraint_by_hand(cor, imbalance, n, consistent):
    assert chain_factors(cor, imbalance, n).consistent is consistent


@pytest.mark.parametrize(("cor", "imbalance", "n"), [(0.95, 10, 10), (0.85, 5, 15), ("i", 1, 10), (0.99, 10, 5)])
def test_a_consistent_chain_has_the_geometric_prior_as_stationary_distribution(cor, imbalance, n):
    factors = chain_factors(cor, imbalance, n)
    prior = imbalance ** (-np.arange(n) / (n - 1))
    prior /= prior.sum()
    assert np.allclose(factors.ratios, prior)
    assert factors.stay[0] == pytest.approx(1 / n if cor == "i" else cor)  # the head keeps the given correlation
    assert factors.stay[-1] >= 1 / n - 1e-12  # the tail at least as sticky as i.i.d.
    assert np.allclose(prior @ transition(factors.stay), prior)


def test_an_inconsistent_chain_keeps_one_correlation_for_every_state():
    factors = chain_factors(0.1, 10, 10)
    assert np.all(factors.stay == 0.1) and not factors.consistent


def test_consistent_factors_give_the_geometric_class_and_domain_histograms():
    # 3 domains x 5 classes, 20 images each; a long chain (the head state's count 3,000, images repeat)
    domains, labels = np.repeat(np.arange(3), 100), np.tile(np.arange(5), 60)
    spec = UniTTA(0.9, 8.0, 0.8, 2.0)
    visited = unitta_indices(domains, labels, spec, 0, max_state_samples=3000)
    for values, n, imbalance in ((labels[visited], 5, 8.0), (domains[visited], 3, 2.0)):
        prior = imbalance ** (-np.arange(n) / (n - 1))
        share = np.bincount(values, minlength=n) / len(values)
        assert np.allclose(share, prior / prior.sum(), atol=0.02)
    same_class = np.mean(labels[visited][1:] == labels[visited][:-1])
    expected = chain_factors(0.9, 8.0, 5).stay @ (8.0 ** (-np.arange(5) / 4) / (8.0 ** (-np.arange(5) / 4)).sum())
    assert same_class == pytest.approx(expected, abs=0.02)


def test_quotas_reproduce_the_official_sampler_exactly():
    # UniTTASampler(cor_domain 0.067, imb_domain 5, cor_class 0.1, imb_class 10, 15 domains, 10 classes,
    # max_state_samples 188) on 15 domains x the first 2,000 Fashion-MNIST test labels: both factors
    # inconsistent, so per-state quotas fix the histograms; identical over 10 seeds
    # (/work/scratch/imbalance/compare.py unitta, code iuiu)
    domains, labels = fmnist_pool()
    for seed in range(3):
        visited = unitta_indices(domains, labels, "unitta:0.1:10:0.067:5", seed)
        assert len(visited) == 5818 and len(np.unique(visited)) == 5818
        assert np.bincount(labels[visited]).tolist() == [1423, 1103, 853, 661, 512, 396, 306, 238, 184, 142]
        assert np.bincount(domains[visited]).tolist() == [
            769, 686, 611, 544, 486, 433, 385, 342, 307, 274, 245, 217, 193, 172, 154
        ]  # fmt: skip
    # code i111 (continual domains, i.i.d. classes): each domain in turn, 10 x 188 images each
    visited = unitta_indices(domains, labels, "unitta:0.1:1:1:1", 0)
    assert np.bincount(domains[visited]).tolist() == [1880] * 15
    assert np.all(np.diff(domains[visited]) >= 0)


def test_correlations_match_the_official_sampler():
    # UniTTASampler figures, mean over 10 seeds (/work/scratch/imbalance/compare.py unitta, code nunu:
    # cor_class 0.95, imb_class 10, cor_domain 0.85, imb_domain 5): P(same class) 0.878, P(same domain) 0.702
    domains, labels = fmnist_pool()
    same_class, same_domain = [], []
    for seed in range(10):
        visited = unitta_indices(domains, labels, "unitta:nunu", seed)
        same_class.append(np.mean(labels[visited][1:] == labels[visited][:-1]))
        same_domain.append(np.mean(domains[visited][1:] == domains[visited][:-1]))
    assert np.mean(same_class) == pytest.approx(0.878, abs=0.008)
    assert np.mean(same_domain) == pytest.approx(0.702, abs=0.008)


def test_the_chain_starts_in_the_head_state_and_walks_its_pools_round_robin():
    domains, labels = np.zeros(6, dtype=np.int64), np.array([0, 0, 0, 1, 1, 1])
    # one domain, class correlation 1 (stay until the quota is used), two classes of three images
    visited = unitta_indices(domains, labels, UniTTA(1.0, 1.0, "i", 1.0), 0, max_state_samples=5)
    assert labels[visited].tolist() == [0] * 5 + [1] * 5
    assert sorted(visited[:3].tolist()) == [0, 1, 2] and visited[3:5].tolist() == visited[:2].tolist()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("unitta:1:1:1:1", "impossible"),
        ("unitta:0:1:0.5:1", r"class correlation factor must be a number in \(0, 1\]"),
        ("unitta:0.5:1:1.5:1", "domain correlation factor"),
        ("unitta:0.5:0.9:0.5:1", "class imbalance factor must be a finite number >= 1"),
        ("unitta:0.5:1:0.5:inf", "domain imbalance factor"),
        ("unitta:0.5:1:0.5", "four factors"),
        ("unitta:nu1", "four letters"),
        ("unitta:xu1u", "'x' is no class correlation letter"),
        ("unitta:n1uu", "'u' is no domain correlation letter"),
        ("unitta", "unitta:<code>"),
        ("unittas:nu1u", "unitta:<code>"),
    ],
)
def test_bad_unitta_settings_are_clear_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_unitta(text)
    with pytest.raises(ValueError, match=message):
        parse_setting(text)


def test_unitta_spellings_round_trip_to_one_canonical_name():
    assert parse_setting("unitta:0.95:10:0.85:5") == parse_setting("unitta:nunu") == "unitta:nunu"
    assert parse_setting("unitta:i:1:1:5") == "unitta:i11u"
    assert parse_setting("unitta:0.9:10.0:i:1") == "unitta:0.9:10:i:1"
    for text in ("unitta:nu1u", "unitta:0.3:2.5:0.7:1", "unitta:i:3:i:3"):
        assert parse_setting(parse_setting(text)) == parse_setting(text)
        assert parse_unitta(parse_setting(text)) == parse_unitta(text)


def test_impossible_streams_are_refused_before_any_image_is_read(tmp_path):
    with pytest.raises(ValueError, match="domain imbalance factor of 5 needs at least two domains"):
        tta_streams.Stream("fmnist", corruptions="fog", setting="unitta:nunu", n_examples=200, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="takes no label order"):
        tta_streams.Stream("fmnist", corruptions=["fog", "snow"], setting="unitta:nunu", order="sorted",
                           n_examples=200, cache_dir=tmp_path)  # fmt: skip
    domains, labels = np.array([0, 0, 1]), np.array([0, 1, 0])
    with pytest.raises(ValueError, match="domain 1 has no image of class 1"):
        unitta_indices(domains, labels, "unitta:i1i1", 0)
    assert not any(tmp_path.iterdir())  # nothing corrupted


def test_a_unitta_stream_is_one_episode_whose_batches_carry_each_images_domain(tmp_path):
    (episode,) = plan("unitta:nu1u", ["fog", "snow"], [5])
    assert episode.mixed and episode.markov == parse_unitta("unitta:nu1u")
    stream = tta_streams.Stream("fmnist", corruptions=["fog", "snow", "contrast"], setting="unitta:0.95:10:1:5",
                                n_examples=300, batch_size=40, seed=0, cache_dir=tmp_path)  # fmt: skip
    assert stream.setting == "unitta:nu1u" and stream.domains == [("fog", 5), ("snow", 5), ("contrast", 5)]
    episodes = list(stream.episodes())
    assert len(episodes) == 1 and episodes[0][0] is None
    batches = list(episodes[0][1])
    domains = [d for batch in batches for d in batch.domain]
    # domain correlation 1: the domains in turn, never back
    firsts = [domains.index(d) for d in stream.domains]
    assert firsts == sorted(firsts) and len(set(domains)) == 3
    assert [d for i, d in enumerate(domains) if i == 0 or d != domains[i - 1]] == stream.domains
    labels = np.concatenate([batch.y.numpy() for batch in batches])
    assert stream.label_stats().same_label_rate == pytest.approx(np.mean(labels[1:] == labels[:-1]))


SCRIPT = """
import numpy as np, sys
from tta_streams.markov import unitta_indices
domains, labels = np.repeat(np.arange(4), 200), np.tile(np.arange(8), 100)
sys.stdout.write(",".join(map(str, unitta_indices(domains, labels, "unitta:nunu", 11)[:300])))
"""


def test_a_unitta_stream_is_the_same_in_a_new_process():
    domains, labels = np.repeat(np.arange(4), 200), np.tile(np.arange(8), 100)
    here = unitta_indices(domains, labels, "unitta:nunu", 11)[:300]
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    assert out == ",".join(map(str, here))
