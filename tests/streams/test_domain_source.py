"""The domain sources behind a Stream: a clean set corrupted on the fly and a precomputed set present one
interface, and the same domains give the same batches through either."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tta_streams
from tta_streams.cache import DomainCache
from tta_streams.domain_source import CleanImages, PrecomputedDomains, open_source

DOMAINS = [("fog", 2), ("saturate", 5)]


@pytest.fixture
def clean() -> tta_streams.ImageSet:
    return tta_streams.fashion_mnist().head(40)


def stored_copy(on_the_fly: CleanImages, clean: tta_streams.ImageSet) -> tta_streams.PrecomputedSource:
    """The domains of ``on_the_fly``, written out as a precomputed set would hold them."""

    def load(corruption: str, severity: int, n: int | None) -> tta_streams.ImageSet:
        images = on_the_fly.images((corruption, severity), shared=False)
        return tta_streams.ImageSet(torch.from_numpy(images.copy()), clean.labels, clean.classes)

    return tta_streams.PrecomputedSource("stored", load)


def test_both_sources_serve_the_same_images_and_labels(clean, tmp_path):
    on_the_fly = CleanImages(clean, seed=3, table=None, cache=DomainCache(tmp_path))
    stored = PrecomputedDomains(stored_copy(on_the_fly, clean), n_examples=None, cache=DomainCache(tmp_path))
    for domain in DOMAINS:
        for shared in (False, True):
            assert np.array_equal(stored.images(domain, shared=shared), on_the_fly.images(domain, shared=shared))
        assert np.array_equal(stored.labels(domain), on_the_fly.labels(domain))


@pytest.mark.parametrize("setting", ["single", "continual", "mixed", "gradual"])
def test_streams_over_either_source_give_the_same_batches(clean, tmp_path, setting):
    on_the_fly = CleanImages(clean, seed=3, table=None, cache=DomainCache(tmp_path))
    options = dict(
        corruptions=["fog", "saturate"], severities=[2, 5], setting=setting, batch_size=16, seed=3, cache_dir=tmp_path
    )
    a = list(tta_streams.Stream(clean, **options).episodes())
    b = list(tta_streams.Stream(stored_copy(on_the_fly, clean), **options).episodes())
    assert [label for label, _ in a] == [label for label, _ in b]
    for (_, batches_a), (_, batches_b) in zip(a, b):
        for x, y in zip(batches_a, batches_b):
            assert torch.equal(x.x, y.x) and torch.equal(x.y, y.y) and x.domain == y.domain


def test_each_source_refuses_what_it_cannot_serve(clean, tmp_path):
    cache = DomainCache(tmp_path)
    with pytest.raises(ValueError, match="has no clean domain"):
        open_source(
            stored_copy(CleanImages(clean, seed=0, table=None, cache=cache), clean),
            n_examples=None,
            seed=0,
            table=None,
            cache=cache,
        ).check(None, [5])
    with pytest.raises(ValueError, match="already corrupted"):
        open_source(
            tta_streams.PrecomputedSource("x", lambda *a: clean), n_examples=None, seed=0, table="cifar", cache=cache
        )
    with pytest.raises(ValueError, match="unknown table 'tiny'"):
        open_source(clean, n_examples=None, seed=0, table="tiny", cache=cache).check(["fog"], [5])
    with pytest.raises(TypeError, match="source must be"):
        open_source(np.zeros((3, 1, 28, 28)), n_examples=None, seed=0, table=None, cache=cache)
