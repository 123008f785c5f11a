"""Domain settings (docs/reference/stream_algorithms.md)."""

import numpy as np
import pytest

import tta_streams
from tta_streams.settings import Episode, plan

# The standard order, written out from docs/corruptions.md (independent of the corruption engine's constant).
STANDARD = [
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
]  # fmt: skip


def test_continual_over_all_corruptions_visits_the_standard_order_in_one_episode(tmp_path):
    stream = tta_streams.Stream("fmnist", corruptions="all", setting="continual", n_examples=100, cache_dir=tmp_path)
    assert stream.domains == [(c, 5) for c in STANDARD]
    assert plan("continual", STANDARD, [5]) == [Episode(tuple((c, 5) for c in STANDARD))]


def test_single_resets_before_every_domain():
    episodes = plan("single", ["fog", "snow"], [1, 3])
    assert episodes == [Episode(((c, s),)) for c in ["fog", "snow"] for s in [1, 3]]


def test_gradual_runs_severities_up_and_down_for_each_corruption():
    (episode,) = plan("gradual", ["fog", "snow"], [5])
    assert [s for c, s in episode.domains if c == "fog"] == [1, 2, 3, 4, 5, 4, 3, 2, 1]
    assert [c for c, _ in episode.domains] == ["fog"] * 9 + ["snow"] * 9
    assert not episode.mixed


def test_mixed_is_one_episode_over_the_union():
    (episode,) = plan("mixed", ["fog", "snow"], [2, 5])
    assert episode.mixed and set(episode.domains) == {("fog", 2), ("fog", 5), ("snow", 2), ("snow", 5)}


def test_mixed_stream_mixes_domains_inside_batches(tmp_path):
    stream = tta_streams.Stream(
        "fmnist",
        corruptions=["brightness", "contrast"],
        setting="mixed",
        n_examples=100,
        batch_size=20,
        cache_dir=tmp_path,
    )
    batches = list(stream)
    assert len(batches) == len(stream) == 10
    per_batch = [len(set(b.domain)) for b in batches]
    assert np.mean(per_batch) > 1.5  # iid over the union: nearly every batch holds both domains
    domains = [d for b in batches for d in b.domain]
    assert domains.count(("brightness", 5)) == domains.count(("contrast", 5)) == 100
    episodes = list(stream.episodes())
    assert len(episodes) == 1 and episodes[0][0] is None


def test_gradual_stream_repeats_domains_with_fresh_label_orders(tmp_path):
    stream = tta_streams.Stream(
        "fmnist", corruptions=["brightness"], setting="gradual", n_examples=40, batch_size=40, cache_dir=tmp_path
    )
    assert stream.domains == [("brightness", s) for s in (1, 2, 3, 4, 5, 4, 3, 2, 1)]
    batches = list(stream)
    assert [b.domain[0][1] for b in batches] == [1, 2, 3, 4, 5, 4, 3, 2, 1]
    assert not np.array_equal(batches[3].y, batches[5].y)  # both severity 4, drawn in different orders


def test_unknown_setting_and_clean_gradual_are_errors():
    with pytest.raises(ValueError, match=r"unknown setting 'episodic'.*single, continual, mixed, gradual"):
        plan("episodic", ["fog"], [5])
    with pytest.raises(ValueError, match="gradual"):
        tta_streams.Stream("fmnist", corruptions=None, setting="gradual")
