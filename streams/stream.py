"""The test stream (spec S5): a source, a corruption plan, a label ordering and a domain setting.

Design:
- A *clean* source (an :class:`ImageSet`, or ``"fmnist"`` for the embedded Fashion-MNIST test split)
  is corrupted on the fly, one domain at a time, into the on-disk cache (:mod:`streams.cache`), and
  batches are read from the memory-mapped cache file; so no more than one domain's corrupted images is
  ever in memory, and a second run reads the cache.
- A *precomputed* source (:class:`PrecomputedSource`, e.g. :func:`cifar_c_source`) is never corrupted
  again: sequential settings load one domain at a time; ``mixed`` caches each domain on disk first.
- Orderings are index permutations computed from the labels alone when the stream is built, so
  ``len()``, ``label_stats()`` and bad requests (e.g. an impossible Dirichlet order) need no images.
- Randomness: see :mod:`streams._seeds`; each domain has its own corruption seed and label order.
  Image ``i`` of a domain is always corrupted with per-image index ``i``, so the images do not depend on
  the batch size or order.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from streams import settings
from streams._seeds import check_seed, derive_seed, generator
from streams.cache import DomainCache, cache_key
from streams.corruption_sets import PrecomputedSource
from streams.datasets import get_dataset, list_datasets
from streams.imageset import ImageSet
from streams.orderings import LabelStats, batch_label_measures, order_indices, parse_order
from streams.parsing import CLEAN_NAME, parse_corruptions, parse_severities
from streams.settings import Domain

__all__ = ["CLEAN", "Batch", "Stream"]

log = logging.getLogger(__name__)

CLEAN: Domain = (CLEAN_NAME, 0)
"""The domain label of clean (uncorrupted) images."""
_CHUNK_BYTES = 1 << 24
"""Clean images handed to one ``corrupt`` call, in bytes: bounds the engine's working memory."""


@dataclass(frozen=True)
class Batch:
    """One batch (spec S5): ``x`` float32 in [0, 1] (N x C x H x W), ``y`` int64 labels, ``domain`` the
    (corruption, severity) of each sample (``("none", 0)`` for clean images).

    Unpacks as ``x, y, domain = batch`` (so ``for x, y, _ in stream``). It is deliberately not a tuple:
    a DataLoader passes it through unchanged instead of turning each domain tuple into a list."""

    x: torch.Tensor
    y: torch.Tensor
    domain: list[Domain]

    def __iter__(self) -> Iterator[torch.Tensor | list[Domain]]:
        return iter((self.x, self.y, self.domain))


@dataclass(frozen=True)
class _Segment:
    """Images batched together: blocks (domains) concatenated in index space, visited in ``order``."""

    domains: tuple[Domain, ...]
    sizes: tuple[int, ...]
    labels: np.ndarray
    order: np.ndarray


@lru_cache(maxsize=1)
def _engine_version() -> str:
    """Hash of the corruption engine's source and torch's version: a changed engine misses the cache."""
    import streams.corruptions as engine

    digest = hashlib.sha256(torch.__version__.encode())
    for path in sorted(Path(engine.__file__).parent.rglob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _refuse_precorrupted(source: ImageSet) -> None:
    """A domain loaded by ``cifar_c`` / ``imagenet_c`` is already corrupted: streaming it as a clean
    source would corrupt it again (and label it wrongly); name the precomputed source to use instead."""
    if source.precorrupted is None:
        return
    name, corruption, severity = source.precorrupted
    loader, hint = (
        ("imagenet_c", "streams.imagenet_c_source(data_dir)")
        if name == "imagenet-c"
        else ("cifar_c", f"streams.cifar_c_source({name!r}, data_dir)")
    )
    raise ValueError(
        f"this ImageSet is {name} {corruption} at severity {severity} (from streams.{loader}), already "
        "corrupted; a Stream treats an ImageSet as clean and would corrupt it again. Stream the "
        f"precomputed set instead: streams.Stream({hint}, corruptions=[{corruption!r}], severities={severity})"
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
            f"streams.get_dataset({info.name!r}).source(data_dir); by name a Stream takes only the datasets "
            f"that need no files ({', '.join(embedded)})"
        )
    if info is None:
        raise ValueError(
            f"unknown source {name!r}; pass the name of a dataset that needs no files ({', '.join(embedded)}), "
            "an ImageSet, or a PrecomputedSource such as streams.get_dataset('cifar10-c').source(data_dir)"
        )
    return info.source()


class Stream(IterableDataset[Batch]):
    """A reproducible sequence of :class:`Batch` (spec S5).

    ``source``: an :class:`ImageSet` (clean, corrupted on the fly; one loaded by ``cifar_c`` or
    ``imagenet_c`` is refused), the name of a dataset that needs no files (``"fmnist"`` / ``"fmnist-c"``:
    the embedded Fashion-MNIST test split, likewise; see :func:`streams.list_datasets`) or a
    :class:`PrecomputedSource` (e.g. ``streams.get_dataset("cifar10-c").source(data_dir)``).
    ``corruptions``: ``"all"`` (the 15 in standard order), a name, a comma list or a list of names, or
    None / ``"none"`` (clean images only, domain ``("none", 0)``; clean sources only), see
    :mod:`streams.parsing`. ``severities``: an integer or a list (1..5); domains are
    corruption-major (each corruption, then each severity). ``order``: ``iid``, ``dirichlet:<delta>``,
    ``sorted``, ``slots:<gamma>`` (spec S3). ``setting``: ``single``, ``continual``, ``mixed``,
    ``gradual`` (spec S4; ``gradual`` visits severities 1,2,3,4,5,4,3,2,1 and ignores ``severities``).
    ``seed``: an integer in 0..2**64-1 (a float, bool or string is a TypeError).
    ``n_examples``: the first n images of each domain (default all). ``table``: the corruption
    parameter table (default: chosen by the engine from the image size). ``cache_dir``: where corrupted
    domains are cached (default ``$TTA_CACHE_DIR`` or ``~/.cache/tta``).

    Batches never straddle two domains in the sequential settings (each domain's last short batch is
    kept); in ``mixed`` they do. The same arguments give the same batches bit for bit.

    Iterate :meth:`episodes` to reset the policy between episodes (``single``: between domains);
    iterating a multi-domain ``single`` stream flat warns once, since nothing resets there. A Stream is
    a torch ``IterableDataset``: ``DataLoader(stream, batch_size=None)`` yields the same batches, with
    ``num_workers`` 0 or 1 (more workers would each replay the whole stream, and are refused).
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
        cache_dir: str | Path | None = None,
    ) -> None:
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if n_examples is not None and (not _is_int(n_examples) or n_examples < 1):
            raise ValueError(f"n_examples must be a positive integer or None, got {n_examples!r}")
        if setting not in settings.SETTINGS:
            raise ValueError(f"unknown setting {setting!r}; choose from: {', '.join(settings.SETTINGS)}")
        seed = check_seed(seed)
        if table is not None and not isinstance(table, str):
            raise ValueError(f"table must be a table name or None, got {table!r}")
        self.order = parse_order(order)
        self.setting = setting
        self.batch_size = int(batch_size)
        self.n_examples = n_examples
        self.seed = int(seed)
        self.table = table
        self._cache = DomainCache(cache_dir)
        parsed = parse_corruptions(corruptions)
        corruption_list = None if parsed == (CLEAN_NAME,) else list(parsed)
        severity_list = list(parse_severities(severities))
        if setting == "gradual" and severities != 5:
            log.info("setting 'gradual' visits severities %s; severities=%r is not used",
                     settings.GRADUAL_SEVERITIES, severities)

        self._clean: ImageSet | None = None
        self._precomputed: PrecomputedSource | None = None
        if isinstance(source, str):
            source = _named_source(source)
        if isinstance(source, ImageSet):
            _refuse_precorrupted(source)
            self._clean = source.head(n_examples)
            self._fingerprint = self._fingerprint_images(self._clean)
        elif isinstance(source, PrecomputedSource):
            self._precomputed = source
            if corruption_list is None:
                raise ValueError(f"precomputed source {source.name!r} has no clean domain; pass corruptions")
            if table is not None:
                raise ValueError("table applies to corruption on the fly; a precomputed source is already corrupted")
        else:
            raise TypeError(
                f"source must be an ImageSet, 'fmnist' or a PrecomputedSource, got {type(source).__name__}"
            )

        if corruption_list is None:
            if setting == "gradual":
                raise ValueError("setting 'gradual' needs corruptions (it varies their severity)")
            self._plan = [settings.Episode((CLEAN,), mixed=setting == "mixed")]
        else:
            self._plan = settings.plan(setting, corruption_list, severity_list)
        if self._clean is not None and corruption_list is not None:
            self._check_engine_accepts(corruption_list, severity_list)
        self._labels: dict[Domain, np.ndarray] = {}
        self._segments = [self._build_segments(episode) for episode in self._plan]
        self._warned_flat = False

    # ----------------------------------------------------------------- planning (labels only)
    def _check_engine_accepts(self, corruptions: list[str], severities: list[int]) -> None:
        """Fail now, not mid-stream: the engine validates names, severities, table and image shape on an
        empty batch of the source's shape."""
        from streams.corruptions import corrupt

        empty = self._clean.images[:0]
        for corruption in corruptions:
            for severity in settings.GRADUAL_SEVERITIES[:5] if self.setting == "gradual" else severities:
                corrupt(empty, corruption, severity, seed=0, table=self.table)

    @staticmethod
    def _fingerprint_images(images: ImageSet) -> str:
        digest = hashlib.sha256(str(tuple(images.images.shape)).encode())
        digest.update(images.images.contiguous().numpy().tobytes())
        return digest.hexdigest()[:32]

    def _domain_labels(self, domain: Domain) -> np.ndarray:
        if domain not in self._labels:
            if self._clean is not None:
                labels = self._clean.labels
            else:
                labels = self._precomputed.domain_labels(domain[0], domain[1], self.n_examples)
            self._labels[domain] = labels.numpy().astype(np.int64, copy=False)
        return self._labels[domain]

    def _build_segments(self, episode: settings.Episode) -> list[_Segment]:
        if episode.mixed:
            labels = [self._domain_labels(d) for d in episode.domains]
            union = np.concatenate(labels)
            order = order_indices(union, self.order, generator("order-mixed", self.seed))
            return [_Segment(episode.domains, tuple(len(x) for x in labels), union, order)]
        segments = []
        visits: Counter[Domain] = Counter()
        for domain in episode.domains:
            labels = self._domain_labels(domain)
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
        """How non-i.i.d. the stream is (spec S3): averages over all its batches of the number of
        distinct labels and of the TV distance between the batch's label histogram and its domain's."""
        distinct, tv = zip(
            *(batch_label_measures(seg.labels[seg.order], self.batch_size) for segs in self._segments for seg in segs)
        )
        distinct, tv = np.concatenate(distinct), np.concatenate(tv)
        return LabelStats(float(distinct.mean()), float(tv.mean()), len(tv))

    def episodes(self) -> Iterator[tuple[Domain | None, Iterator[Batch]]]:
        """(domain, batches) per episode; reset the policy before each (spec S4). ``single``: one
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
        source = self._precomputed.name if self._precomputed is not None else f"ImageSet[{len(self._clean)}]"
        return (
            f"Stream({source}, setting={self.setting!r}, order='{self.order}', domains={len(self.domains)}, "
            f"batch_size={self.batch_size}, seed={self.seed}, batches={len(self)})"
        )

    # ----------------------------------------------------------------- images
    def _batches(self, segments: list[_Segment]) -> Iterator[Batch]:
        for seg in segments:
            blocks = [self._domain_images(d, cached=len(seg.domains) > 1) for d in seg.domains]
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

    def _domain_images(self, domain: Domain, *, cached: bool) -> np.ndarray:
        """uint8 N x C x H x W images of one domain: clean tensor, cache file (memory-mapped) or loaded."""
        corruption, severity = domain
        if self._clean is not None:
            if domain == CLEAN:
                return self._clean.images.numpy()
            return self._corrupted(corruption, severity)
        if cached:
            key = cache_key(
                kind="precomputed-domain",
                source=self._precomputed.domain_fingerprint(corruption, severity),
                n_examples=self.n_examples,
            )
            array = self._cache.load(key)
            if array is not None:
                return array
            images = self._load_precomputed(domain)
            return self._cache.store(key, tuple(images.shape), lambda out: out.__setitem__(Ellipsis, images))
        return self._load_precomputed(domain)

    def _load_precomputed(self, domain: Domain) -> np.ndarray:
        loaded = self._precomputed.load(domain[0], domain[1], self.n_examples)
        if not np.array_equal(loaded.labels.numpy(), self._domain_labels(domain)):
            raise RuntimeError(
                f"{self._precomputed.name} {domain}: the loaded labels differ from the labels the stream "
                "was planned with (its labels function and loader disagree)"
            )
        return loaded.images.numpy()

    def _corrupted(self, corruption: str, severity: int) -> np.ndarray:
        """The clean images corrupted as domain (corruption, severity), via the disk cache."""
        from streams.corruptions import corrupt

        clean = self._clean.images
        domain_seed = derive_seed("corrupt", self.seed, corruption, severity)
        key = cache_key(
            kind="corrupted-domain",
            source=self._fingerprint,
            corruption=corruption,
            severity=severity,
            table=self.table,
            seed=self.seed,
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
                    seed=domain_seed, table=self.table, index_offset=start,
                )  # fmt: skip
                out[start : start + len(part)] = part.cpu().numpy()

        return self._cache.get_or_create(key, tuple(clean.shape), fill)
