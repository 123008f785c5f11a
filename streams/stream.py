"""The test stream: a source, a corruption plan, a label ordering and a domain setting (see :doc:`/streams`).

Design:
- Images come from a :class:`~tta_streams.domain_source.DomainSource`, one domain at a time: a clean
  image set corrupted on the fly into the on-disk cache, or a precomputed corrupted set read as it is
  (:mod:`tta_streams.domain_source`).
- Orderings are index permutations computed from the labels alone when the stream is built, so
  ``len()``, ``label_stats()`` and bad requests (e.g. an impossible Dirichlet order) need no images.
- Randomness: see :mod:`tta_streams._seeds`; each domain has its own corruption seed and label order.
"""

from __future__ import annotations

import dis
import logging
import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import CodeType, FrameType

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from tta_streams import settings
from tta_streams._seeds import check_seed, generator
from tta_streams.cache import DomainCache
from tta_streams.corruption_sets import PrecomputedSource
from tta_streams.corruptions import is_int
from tta_streams.domain_source import open_source
from tta_streams.imageset import ImageSet
from tta_streams.markov import parse_unitta, unitta_indices
from tta_streams.orderings import LabelStats, label_stats, order_indices, parse_order
from tta_streams.parsing import CLEAN_NAME, parse_corruptions, parse_severities
from tta_streams.settings import Domain

__all__ = ["CLEAN", "Batch", "Stream"]

log = logging.getLogger(__name__)

CLEAN: Domain = (CLEAN_NAME, 0)
"""The domain label of clean (uncorrupted) images."""


@dataclass(frozen=True)
class Batch:
    """One batch: ``x`` float32 in [0, 1] (N x C x H x W), ``y`` int64 labels, ``domain`` the
    (corruption, severity) of each sample (``("none", 0)`` for clean images).

    Unpacks as ``x, y, domain = batch`` (so ``for x, y, _ in stream``). It is deliberately not a tuple:
    a DataLoader passes it through unchanged instead of turning each domain tuple into a list."""

    x: torch.Tensor
    y: torch.Tensor
    domain: list[Domain]

    def __iter__(self) -> Iterator[torch.Tensor | list[Domain]]:
        targets = _unpack_targets(sys._getframe(1))
        if targets not in (None, 3):
            raise ValueError(
                f"a stream's batch unpacks into three values, x, y and domain, not {targets}: "
                "write `for x, y, _ in stream` (or use batch.x, batch.y)"
            )
        return iter((self.x, self.y, self.domain))


def _unpack_targets(frame: FrameType) -> int | None:
    """How many names the instruction running in ``frame`` unpacks into (``a, b = ...``), or None when it
    is no plain unpacking or cannot be read: only to turn Python's bare "too many values to unpack" into a
    message that names the batch's three parts."""
    return _unpack_targets_at(frame.f_code, frame.f_lasti)


@lru_cache(maxsize=256)
def _unpack_targets_at(code: CodeType, offset: int) -> int | None:
    try:
        instruction = next(i for i in dis.get_instructions(code) if i.offset == offset)
    except (StopIteration, TypeError, ValueError):
        return None
    return instruction.argval if instruction.opname == "UNPACK_SEQUENCE" else None


@dataclass(frozen=True)
class _Segment:
    """Images batched together: blocks (domains) concatenated in index space, visited in ``order``."""

    domains: tuple[Domain, ...]
    sizes: tuple[int, ...]
    labels: np.ndarray
    order: np.ndarray


class Stream(IterableDataset[Batch]):
    """A reproducible sequence of :class:`Batch`: a source, a corruption plan, a label order and a
    domain setting.

    Batches never straddle two domains in the sequential settings (each domain's last short batch is
    kept); in ``mixed`` and ``unitta`` they do. The same arguments give the same batches bit for bit.

    Iterate :meth:`episodes` to reset the policy between episodes (``single``: between domains);
    iterating a multi-domain ``single`` stream flat warns once, since nothing resets there. A Stream is
    a torch ``IterableDataset``: ``DataLoader(stream, batch_size=None)`` yields the same batches, with
    ``num_workers`` 0 or 1 (more workers would each replay the whole stream, and are refused).

    Args:
        source: an :class:`ImageSet` (clean images, corrupted on the fly; a set loaded by ``cifar_c`` or
            ``imagenet_c`` is refused), the name of a dataset that needs no files (``"fmnist"`` or
            ``"fmnist-c"``: the embedded Fashion-MNIST test split; see :func:`tta_streams.list_datasets`),
            or a :class:`PrecomputedSource` (e.g. ``tta_streams.get_dataset("cifar10-c").source(data_dir)``).
        corruptions: ``"all"`` (the 15 standard ones in the standard order), a name, a comma list or a list
            of names, or None / ``"none"`` (the clean images only, domain ``("none", 0)``; clean sources only).
        severities: an integer in 1..5 or a list of them; the domains are corruption-major (each corruption,
            then each severity).
        order: ``iid``, ``dirichlet:<delta>``, ``sorted`` or ``slots:<gamma>``, optionally after a long-tailed
            class prior, ``imbalanced:<IF>[:random]`` alone or joined by ``+`` (``imbalanced:100+slots:0.1``
            is TRIBE's GLI-TTA).
        setting: ``single``, ``continual``, ``mixed``, ``gradual`` (which visits severities
            1,2,3,4,5,4,3,2,1 and ignores ``severities``) or ``unitta:<code>`` (UniTTA's Markov chain over
            (domain, class), e.g. ``unitta:nu1u``; it draws the classes itself, so ``order`` stays ``iid``).
        batch_size: images per batch (>= 1).
        n_examples: the first ``n_examples`` images of each domain (None: all).
        seed: an integer in 0..2**64-1 (a float, bool or string is a TypeError).
        table: the corruption parameter table, ``"cifar"`` or ``"imagenet"`` (None: by image size).
        cache_dir: where corrupted domains are cached (None: ``$TTA_CACHE_DIR``, else ``~/.cache/tta``).

    Example:
        >>> stream = Stream("fmnist", corruptions="fog", order="dirichlet:0.1", n_examples=200)
        >>> for domain, batches in stream.episodes():
        ...     for x, y, _ in batches:
        ...         pass

    See :doc:`/streams`; the algorithms are in :doc:`/reference/stream_algorithms`.
    """

    def __init__(
        self,
        source: ImageSet | PrecomputedSource | str,
        *,
        corruptions: str | Sequence[str] | None = "all",
        severities: int | Sequence[int] = 5,
        order: str = "iid",
        setting: str = "single",
        batch_size: int = 64,
        n_examples: int | None = None,
        seed: int = 0,
        table: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if n_examples is not None and (not is_int(n_examples) or n_examples < 1):
            raise ValueError(f"n_examples must be a positive integer or None, got {n_examples!r}")
        setting = settings.parse_setting(setting)
        seed = check_seed(seed)
        if table is not None and not isinstance(table, str):
            raise ValueError(f"table must be a table name or None, got {table!r}")
        self.order = parse_order(order)
        if setting.startswith("unitta") and str(self.order) != "iid":
            raise ValueError(
                f"setting {setting!r} draws the classes itself (a Markov chain over domain and class), so it "
                f"takes no label order: leave order at 'iid', got {str(self.order)!r}"
            )
        self.setting = setting
        self.batch_size = int(batch_size)
        self.n_examples = n_examples = None if n_examples is None else int(n_examples)
        self.seed = int(seed)
        self.table = table
        self._cache = DomainCache(cache_dir)
        parsed = parse_corruptions(corruptions)
        corruption_list = None if parsed == (CLEAN_NAME,) else list(parsed)
        severity_list = list(parse_severities(severities))
        if setting == "gradual" and severities != 5:
            log.info(
                "setting 'gradual' visits severities %s; severities=%r is not used",
                settings.GRADUAL_SEVERITIES,
                severities,
            )

        self._source = open_source(source, n_examples=n_examples, seed=self.seed, table=table, cache=self._cache)
        self._source.check(corruption_list, settings.GRADUAL_SEVERITIES[:5] if setting == "gradual" else severity_list)
        if corruption_list is None:
            if setting == "gradual":
                raise ValueError("setting 'gradual' needs corruptions (it varies their severity)")
            markov = parse_unitta(setting) if setting.startswith("unitta") else None
            self._plan = [settings.Episode((CLEAN,), mixed=setting == "mixed" or markov is not None, markov=markov)]
        else:
            self._plan = settings.plan(setting, corruption_list, severity_list)
        self._segments = [self._build_segments(episode) for episode in self._plan]
        self._warned_flat = False

    # ----------------------------------------------------------------- planning (labels only)
    def _build_segments(self, episode: settings.Episode) -> list[_Segment]:
        if episode.markov is not None:
            domain_labels = [self._source.labels(d) for d in episode.domains]
            union = np.concatenate(domain_labels)
            ids = np.repeat(np.arange(len(domain_labels)), [len(x) for x in domain_labels])
            order = unitta_indices(ids, union, episode.markov, generator("order-unitta", self.seed))
            unseen = [d for i, d in enumerate(episode.domains) if not np.any(ids[order] == i)]
            if unseen:
                raise ValueError(f"setting {self.setting!r}: the chain drew no image of {unseen}; use more examples")
            return [_Segment(episode.domains, tuple(len(x) for x in domain_labels), union, order)]
        if episode.mixed:
            domain_labels = [self._source.labels(d) for d in episode.domains]
            union = np.concatenate(domain_labels)
            order = order_indices(union, self.order, generator("order-mixed", self.seed))
            return [_Segment(episode.domains, tuple(len(x) for x in domain_labels), union, order)]
        segments = []
        visits: Counter[Domain] = Counter()
        for domain in episode.domains:
            labels = self._source.labels(domain)
            rng = generator("order", self.seed, domain[0], domain[1], visits[domain])
            visits[domain] += 1
            segments.append(_Segment((domain,), (len(labels),), labels, order_indices(labels, self.order, rng)))
        return segments

    # ----------------------------------------------------------------- public views
    @property
    def domains(self) -> list[Domain]:
        """The (corruption, severity) domains in visiting order (``gradual`` repeats severities 1..4;
        ``mixed`` lists the domains of its union)."""
        return [domain for episode in self._plan for domain in episode.domains]

    def __len__(self) -> int:
        """Number of batches."""
        return sum(-(-len(seg.order) // self.batch_size) for segs in self._segments for seg in segs)

    def label_stats(self) -> LabelStats:
        """How non-i.i.d. the stream is: averages over all its batches of the number of distinct labels and
        of the TV distance between the batch's label histogram and its domain's; the class imbalance (largest
        over smallest class count), the rate of consecutive samples sharing a label and the mean run length,
        inside each domain (each union in ``mixed`` and ``unitta``). See :class:`~tta_streams.LabelStats`."""
        return label_stats([seg.labels[seg.order] for segs in self._segments for seg in segs], self.batch_size)

    def episodes(self) -> Iterator[tuple[Domain | None, Iterator[Batch]]]:
        """(domain, batches) per episode; reset the policy before each. ``single``: one
        episode per domain, labelled by it; other settings: one episode labelled None (per-sample
        domains are in the batches)."""
        for episode, segments in zip(self._plan, self._segments):
            label = episode.domains[0] if self.setting == "single" else None
            yield label, self._batches(segments)

    def __iter__(self) -> Iterator[Batch]:
        """All batches, episode after episode, with no reset between them (see :meth:`episodes`)."""
        worker = get_worker_info()
        if worker is not None and worker.num_workers > 1:
            raise RuntimeError(
                f"a Stream cannot be split over DataLoader(num_workers={worker.num_workers}): each worker "
                "would replay the whole stream. Use num_workers=0 or 1 (a stream is one sequential pass; "
                "its domains are corrupted once into the disk cache)."
            )
        if self.setting == "single" and len(self._plan) > 1 and not self._warned_flat:
            self._warned_flat = True
            warnings.warn(
                f"iterating a 'single' stream of {len(self._plan)} domains flat adapts across all of them "
                "without a reset, which is the continual setting. Iterate "
                "`for domain, batches in stream.episodes()` and call `tta.reset(model)` before each "
                "episode (or build the stream with setting='continual' if that is what you mean).",
                stacklevel=2,
            )
        for _, batches in self.episodes():
            yield from batches

    def __repr__(self) -> str:
        return (
            f"Stream({self._source.name}, setting={self.setting!r}, order='{self.order}', domains={len(self.domains)}, "
            f"batch_size={self.batch_size}, seed={self.seed}, batches={len(self)})"
        )

    # ----------------------------------------------------------------- images
    def _batches(self, segments: list[_Segment]) -> Iterator[Batch]:
        for seg in segments:
            blocks = [self._source.images(d, shared=len(seg.domains) > 1) for d in seg.domains]
            offsets = np.concatenate([[0], np.cumsum(seg.sizes)])
            for start in range(0, len(seg.order), self.batch_size):
                yield self._gather(seg, blocks, offsets, seg.order[start : start + self.batch_size])
            del blocks  # release this domain before the next one is produced

    @staticmethod
    def _gather(seg: _Segment, blocks: list[np.ndarray], offsets: np.ndarray, idx: np.ndarray) -> Batch:
        if len(blocks) == 1:
            block_of = np.zeros(len(idx), dtype=np.int64)
            x = blocks[0][idx]
        else:
            block_of = np.searchsorted(offsets, idx, side="right") - 1
            local = idx - offsets[block_of]
            x = np.empty((len(idx), *blocks[0].shape[1:]), dtype=np.uint8)
            for b in np.unique(block_of):
                mask = block_of == b
                x[mask] = blocks[b][local[mask]]
        # uint8 -> float32 / 255 in numpy: the same correctly rounded values as torch, without torch's
        # per-call thread-pool overhead on small batches
        return Batch(
            x=torch.from_numpy(np.divide(x, np.float32(255), dtype=np.float32)),
            y=torch.from_numpy(seg.labels[idx]),
            domain=[seg.domains[b] for b in block_of],
        )
