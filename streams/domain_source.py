"""Where a stream's images come from, one domain at a time: a single interface over a clean
image set (corrupted on the fly) and a precomputed corrupted set.

- :class:`CleanImages` corrupts an :class:`ImageSet` one domain at a time into the on-disk cache
  (:mod:`tta_streams.cache`) and serves the memory-mapped cache file; so no more than one domain's corrupted
  images is ever in memory, and a second run reads the cache. Image ``i`` of a domain is always
  corrupted with per-image index ``i``, so the images do not depend on the batch size or order.
- :class:`PrecomputedDomains` reads a :class:`PrecomputedSource` and never corrupts again; a domain
  is cached on disk only when it is shared with others in one batch sequence (the ``mixed`` setting).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from tta_streams._seeds import derive_seed
from tta_streams.cache import DomainCache, cache_key
from tta_streams.corruption_sets import PrecomputedSource
from tta_streams.datasets import get_dataset, list_datasets
from tta_streams.imageset import ImageSet
from tta_streams.parsing import CLEAN_NAME
from tta_streams.settings import Domain

__all__ = ["CleanImages", "DomainSource", "PrecomputedDomains", "open_source"]

log = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 24
"""Clean images handed to one ``corrupt`` call, in bytes: bounds the engine's working memory."""


class DomainSource(Protocol):
    """A stream's images and labels, by domain ``(corruption, severity)``; ``("none", 0)`` is clean."""

    name: str
    """How the stream's repr names the source."""

    def check(self, corruptions: list[str] | None, severities: Sequence[int]) -> None:
        """Refuse, before any image is made, domains it cannot serve (None: the clean images)."""

    def labels(self, domain: Domain) -> np.ndarray:
        """The int64 labels of ``domain``, cheaply (no images decoded where avoidable)."""

    def images(self, domain: Domain, *, shared: bool) -> np.ndarray:
        """uint8 N x C x H x W images of ``domain`` in label order; ``shared``: batched with other domains."""


@lru_cache(maxsize=1)
def _engine_version() -> str:
    """Hash of the corruption engine's source and torch's version: a changed engine misses the cache."""
    import tta_streams.corruptions as engine

    digest = hashlib.sha256(torch.__version__.encode())
    for path in sorted(Path(engine.__file__).parent.rglob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _fingerprint_images(images: ImageSet) -> str:
    digest = hashlib.sha256(str(tuple(images.images.shape)).encode())
    digest.update(images.images.contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


class CleanImages:
    """Clean images corrupted on the fly, domain by domain, through the disk cache."""

    def __init__(self, images: ImageSet, *, seed: int, table: str | None, cache: DomainCache) -> None:
        self._images = images
        self._seed = seed
        self._table = table
        self._cache = cache
        self._fingerprint = _fingerprint_images(images)
        self._labels = images.labels.numpy().astype(np.int64, copy=False)
        self.name = f"ImageSet[{len(images)}]"

    def check(self, corruptions: list[str] | None, severities: Sequence[int]) -> None:
        """The engine validates names, severities, table and image shape on an empty batch."""
        from tta_streams.corruptions import corrupt

        empty = self._images.images[:0]
        for corruption in corruptions or []:
            for severity in severities:
                corrupt(empty, corruption, severity, seed=0, table=self._table)

    def labels(self, domain: Domain) -> np.ndarray:
        return self._labels

    def images(self, domain: Domain, *, shared: bool) -> np.ndarray:
        corruption, severity = domain
        if corruption == CLEAN_NAME:
            return self._images.images.numpy()
        return self._corrupted(corruption, severity)

    def _corrupted(self, corruption: str, severity: int) -> np.ndarray:
        """The clean images corrupted as domain (corruption, severity), via the disk cache."""
        from tta_streams.corruptions import corrupt

        clean = self._images.images
        domain_seed = derive_seed("corrupt", self._seed, corruption, severity)
        key = cache_key(
            kind="corrupted-domain",
            source=self._fingerprint,
            corruption=corruption,
            severity=severity,
            table=self._table,
            seed=self._seed,
            corruption_seed=domain_seed,
            n_examples=len(clean),
            engine=_engine_version(),
        )

        def fill(out: np.ndarray) -> None:
            log.info("corrupting %d images: %s, severity %d", len(clean), corruption, severity)
            chunk = max(1, _CHUNK_BYTES // max(1, clean[0].numel()))
            for start in range(0, len(clean), chunk):
                part = corrupt(
                    clean[start : start + chunk], corruption, severity,
                    seed=domain_seed, table=self._table, index_offset=start,
                )  # fmt: skip
                out[start : start + len(part)] = part.cpu().numpy()

        return self._cache.get_or_create(key, tuple(clean.shape), fill)


class PrecomputedDomains:
    """Domains stored already corrupted: loaded as they are, cached on disk only when shared."""

    def __init__(self, source: PrecomputedSource, *, n_examples: int | None, cache: DomainCache) -> None:
        self._source = source
        self._n_examples = n_examples
        self._cache = cache
        self._labels: dict[Domain, np.ndarray] = {}
        self.name = source.name

    def check(self, corruptions: list[str] | None, severities: Sequence[int]) -> None:
        if corruptions is None:
            raise ValueError(f"precomputed source {self.name!r} has no clean domain; pass corruptions")

    def labels(self, domain: Domain) -> np.ndarray:
        if domain not in self._labels:
            labels = self._source.domain_labels(domain[0], domain[1], self._n_examples)
            self._labels[domain] = labels.numpy().astype(np.int64, copy=False)
        return self._labels[domain]

    def images(self, domain: Domain, *, shared: bool) -> np.ndarray:
        if not shared:
            return self._load(domain)
        key = cache_key(
            kind="precomputed-domain",
            source=self._source.domain_fingerprint(*domain),
            n_examples=self._n_examples,
        )
        array = self._cache.load(key)
        if array is not None:
            return array
        images = self._load(domain)
        return self._cache.store(key, tuple(images.shape), lambda out: out.__setitem__(Ellipsis, images))

    def _load(self, domain: Domain) -> np.ndarray:
        loaded = self._source.load(domain[0], domain[1], self._n_examples)
        if not np.array_equal(loaded.labels.numpy(), self.labels(domain)):
            raise RuntimeError(
                f"{self.name} {domain}: the loaded labels differ from the labels the stream "
                "was planned with (its labels function and loader disagree)"
            )
        return loaded.images.numpy()


def _refuse_precorrupted(source: ImageSet) -> None:
    """A domain loaded by ``cifar_c`` / ``imagenet_c`` is already corrupted: streaming it as a clean
    source would corrupt it again (and label it wrongly); name the precomputed source to use instead."""
    if source.precorrupted is None:
        return
    name, corruption, severity = source.precorrupted
    loader, hint = (
        ("imagenet_c", "tta_streams.imagenet_c_source(data_dir)")
        if name == "imagenet-c"
        else ("cifar_c", f"tta_streams.cifar_c_source({name!r}, data_dir)")
    )
    raise ValueError(
        f"this ImageSet is {name} {corruption} at severity {severity} (from streams.{loader}), already "
        "corrupted; a Stream treats an ImageSet as clean and would corrupt it again. Stream the "
        f"precomputed set instead: tta_streams.Stream({hint}, corruptions=[{corruption!r}], severities={severity})"
    )


def _named_source(name: str) -> ImageSet | PrecomputedSource:
    """The source of a dataset named by a string: only datasets that need no files (their data ships
    with the package); the others are read from a folder the stream does not know."""
    embedded = [n for n in list_datasets() if not get_dataset(n).needs_files]
    try:
        info = get_dataset(name)
    except ValueError:
        info = None
    if info is not None and info.needs_files:
        raise ValueError(
            f"unknown source {name!r}: {info.name} is read from files, so pass "
            f"tta_streams.get_dataset({info.name!r}).source(data_dir); by name a Stream takes only the datasets "
            f"that need no files ({', '.join(embedded)})"
        )
    if info is None:
        raise ValueError(
            f"unknown source {name!r}; pass the name of a dataset that needs no files ({', '.join(embedded)}), "
            "an ImageSet, or a PrecomputedSource such as tta_streams.get_dataset('cifar10-c').source(data_dir)"
        )
    return info.source()


def open_source(
    source: ImageSet | PrecomputedSource | str,
    *,
    n_examples: int | None,
    seed: int,
    table: str | None,
    cache: DomainCache,
) -> DomainSource:
    """The :class:`DomainSource` of a stream's ``source`` argument (see :class:`tta_streams.Stream`): an
    ImageSet (clean; one loaded by ``cifar_c`` / ``imagenet_c`` is refused), a dataset name, or a
    PrecomputedSource (with ``table`` None: it is corrupted already)."""
    if isinstance(source, str):
        source = _named_source(source)
    if isinstance(source, ImageSet):
        _refuse_precorrupted(source)
        return CleanImages(source.head(n_examples), seed=seed, table=table, cache=cache)
    if isinstance(source, PrecomputedSource):
        if table is not None:
            raise ValueError("table applies to corruption on the fly; a precomputed source is already corrupted")
        return PrecomputedDomains(source, n_examples=n_examples, cache=cache)
    raise TypeError(f"source must be an ImageSet, 'fmnist' or a PrecomputedSource, got {type(source).__name__}")
