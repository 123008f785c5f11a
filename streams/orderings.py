"""Label orderings within a domain: pure functions from a label array to an index permutation.

Every function takes the labels (any integer array) and an explicit ``numpy.random.Generator`` (or an
integer seed for a fresh one; a float, bool or string is a TypeError naming ``rng``) and returns
``order``, a permutation of ``range(len(labels))``: the stream visits ``labels[order]``. No function
touches a global random state. :func:`label_stats` measures how non-i.i.d. an ordered label sequence
is, batch by batch. The algorithms are described in :doc:`/reference/stream_algorithms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import numpy as np

from tta_streams._seeds import as_generator

__all__ = [
    "ORDERS",
    "RANKINGS",
    "LabelStats",
    "Order",
    "check_imbalance",
    "dirichlet_chunks",
    "dirichlet_order",
    "format_number",
    "iid_order",
    "imbalanced_subset",
    "label_stats",
    "long_tail_counts",
    "order_indices",
    "parse_order",
    "slots_order",
    "sorted_order",
]

ORDERS = ("iid", "dirichlet:<delta>", "sorted", "slots:<gamma>", "imbalanced:<IF>[:random][+<order>]")
"""The accepted order names; ``dirichlet_slots:<gamma>`` is an alias of ``slots:<gamma>``. An
``imbalanced:<IF>`` prefix subsamples each domain to a long-tailed class prior first, then orders the kept
images by the order after ``+`` (``iid`` when none is given)."""

RANKINGS = ("fixed", "random")
"""How the classes are ranked from head to tail in an imbalanced order: ``fixed`` (ascending class id, class
0 the largest) or ``random`` (a permutation drawn from the domain's order generator)."""

_BASE_ORDERS = ("iid", "sorted", "dirichlet", "slots")


def format_number(value: float) -> str:
    """``value`` as the canonical text of a factor: an integral float without its ``.0`` (``100``), any
    other as its shortest repr (``2.5``)."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


@dataclass(frozen=True)
class Order:
    """A parsed order: ``kind`` in iid, dirichlet, sorted, slots; ``concentration`` for the last two;
    ``imbalance`` the imbalance factor of an ``imbalanced:`` prefix (None: no subsampling) and ``ranking``
    how its classes are ranked (:data:`RANKINGS`). ``str()`` gives the canonical spelling, which
    :func:`parse_order` reads back to an equal Order."""

    kind: str
    concentration: float | None = None
    imbalance: float | None = None
    ranking: str = "fixed"

    def __str__(self) -> str:
        base = self.kind if self.concentration is None else f"{self.kind}:{self.concentration!r}"
        if self.imbalance is None:
            return base
        prefix = f"imbalanced:{format_number(self.imbalance)}" + (":random" if self.ranking == "random" else "")
        return prefix if self.kind == "iid" else f"{prefix}+{base}"


def _parse_base_order(text: str, whole: str) -> Order:
    name, sep, value = text.strip().partition(":")
    name = "slots" if name == "dirichlet_slots" else name
    if name in ("iid", "sorted") and not sep:
        return Order(name)
    if name in ("dirichlet", "slots") and sep:
        try:
            concentration = float(value)
        except ValueError:
            raise ValueError(f"order {whole!r}: {value!r} is not a number; write e.g. {name}:0.1") from None
        if not (concentration > 0 and math.isfinite(concentration)):
            raise ValueError(f"order {whole!r}: the concentration must be a positive finite number, got {value}")
        return Order(name, concentration)
    raise ValueError(
        f"unknown order {whole!r}; choose from: {', '.join(ORDERS)} (e.g. dirichlet:0.1 or imbalanced:100+slots:0.1)"
    )


def check_imbalance(value: object, what: str = "the imbalance factor") -> float:
    """``value`` as a float if it is a finite number >= 1; else a ValueError naming ``what``."""
    try:
        factor = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number >= 1 (the largest class over the smallest), got {value!r}") from None
    if isinstance(value, bool) or not (math.isfinite(factor) and factor >= 1):
        raise ValueError(f"{what} must be a finite number >= 1 (the largest class over the smallest), got {value!r}")
    return factor


def parse_order(text: str | Order) -> Order:
    """Parse ``iid``, ``sorted``, ``dirichlet:<delta>``, ``slots:<gamma>`` (alias ``dirichlet_slots``),
    optionally after an imbalance prefix: ``imbalanced:<IF>`` or ``imbalanced:<IF>:random``, alone (i.i.d.
    order of the kept images) or joined by ``+`` to one of those (``imbalanced:100+slots:0.1`` is TRIBE's
    GLI-TTA). ValueError names the problem."""
    if isinstance(text, Order):
        return text
    if not isinstance(text, str):
        raise TypeError(f"order must be a string such as 'iid' or 'dirichlet:0.1', got {type(text).__name__}")
    head, plus, tail = text.strip().partition("+")
    if not head.strip().startswith("imbalanced"):
        if plus:
            raise ValueError(
                f"order {text!r}: only an imbalance prefix combines with an order, written first: "
                "e.g. imbalanced:100+dirichlet:0.1"
            )
        return _parse_base_order(head, text)
    parts = [part.strip() for part in head.strip().split(":")]
    if parts[0] != "imbalanced" or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in RANKINGS):
        raise ValueError(
            f"order {text!r}: write the imbalance as imbalanced:<IF> or imbalanced:<IF>:random (e.g. imbalanced:100)"
        )
    imbalance = check_imbalance(parts[1], f"order {text!r}: the imbalance factor")
    ranking = parts[2] if len(parts) == 3 else "fixed"
    if plus and not tail.strip():
        raise ValueError(f"order {text!r}: nothing after '+'; write e.g. imbalanced:100+dirichlet:0.1")
    if "+" in tail or tail.strip().startswith("imbalanced"):
        raise ValueError(f"order {text!r}: one imbalance prefix and one order at most (e.g. imbalanced:100+slots:0.1)")
    base = _parse_base_order(tail, text) if plus else Order("iid")
    return Order(base.kind, base.concentration, imbalance, ranking)


def _as_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} with shape {labels.shape}")
    return labels


def iid_order(labels: np.ndarray, rng: np.random.Generator | int) -> np.ndarray:
    """A uniform random permutation (``iid``)."""
    rng = as_generator(rng)
    return rng.permutation(len(_as_labels(labels)))


def sorted_order(labels: np.ndarray, rng: np.random.Generator | int) -> np.ndarray:
    """Classes in ascending order, random order inside each class (``sorted``: the δ → 0 limit of
    ``dirichlet``)."""
    rng = as_generator(rng)
    labels = _as_labels(labels)
    shuffled = rng.permutation(len(labels))
    return shuffled[np.argsort(labels[shuffled], kind="stable")]


def _class_indices(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Each present class's indices, shuffled, in ascending class order."""
    return [rng.permutation(np.flatnonzero(labels == k)) for k in np.unique(labels)]


def _cuts(proportions: np.ndarray, n: int) -> np.ndarray:
    """Split points of ``n`` items at the cumulative proportions (floored, as NOTE and RoTTA do).
    Dividing the cumulative sum by its own last entry makes it end at exactly 1, so a chunk whose
    proportion is zero gets no item even through rounding."""
    cumulative = np.cumsum(proportions)
    return (cumulative / cumulative[-1] * n).astype(np.int64)[:-1]


def _emit(groups: list[list[np.ndarray]], rng: np.random.Generator, n: int) -> np.ndarray:
    """Group after group; inside a group its class runs in a shuffled order, each run contiguous."""
    runs = [group[i] for group in groups for i in rng.permutation(len(group))]
    return np.concatenate(runs) if runs else np.zeros(n, dtype=np.int64)


def dirichlet_chunks(
    labels: np.ndarray,
    delta: float,
    rng: np.random.Generator | int,
    *,
    n_chunks: int | None = None,
    min_per_chunk: int = 10,
    max_tries: int = 1000,
) -> list[list[np.ndarray]]:
    """NOTE's Dirichlet chunks: chunk j is the list of its class pieces, in class order.

    For each class (ascending): shuffle its indices, draw ``p ~ Dir(delta)`` over the chunks, zero the
    entries of chunks already holding >= N / n_chunks samples, renormalize and split the class at the
    cumulative proportions, piece j going to chunk j. The whole draw is retried until every chunk holds
    >= ``min_per_chunk`` samples (a draw whose remaining proportions all underflow to zero counts as a
    failed try); after ``max_tries`` failures a ValueError says why. ``n_chunks`` defaults to the number
    of classes present.
    """
    rng = as_generator(rng)
    labels = _as_labels(labels)
    if not (delta > 0 and math.isfinite(delta)):
        raise ValueError(f"the Dirichlet concentration delta must be a positive finite number, got {delta}")
    n = len(labels)
    n_chunks = n_chunks if n_chunks is not None else len(np.unique(labels))
    if n_chunks < 1:
        raise ValueError("dirichlet ordering of an empty label array")
    if n < n_chunks * min_per_chunk:  # no draw can succeed: fail at once instead of after max_tries
        raise ValueError(
            f"dirichlet:{delta}: {n} samples cannot fill {n_chunks} chunks (one per class) with at least "
            f"{min_per_chunk} each; at least {n_chunks * min_per_chunk} are needed. Use more examples."
        )
    cap = n / n_chunks
    for _ in range(max_tries):
        chunks: list[list[np.ndarray]] = [[] for _ in range(n_chunks)]
        sizes = np.zeros(n_chunks, dtype=np.int64)
        failed = False
        for indices in _class_indices(labels, rng):
            p = rng.dirichlet(np.full(n_chunks, float(delta))) * (sizes < cap)
            total = p.sum()
            if not total > 0:
                failed = True
                break
            cuts = _cuts(p, len(indices))
            for j, piece in enumerate(np.split(indices, cuts)):
                if len(piece):
                    chunks[j].append(piece)
                    sizes[j] += len(piece)
        if not failed and sizes.min() >= min_per_chunk:
            return chunks
    raise ValueError(
        f"dirichlet:{delta}: no draw gave every one of {n_chunks} chunks at least {min_per_chunk} samples "
        f"in {max_tries} tries ({n} samples; a small delta with few samples per class rarely balances). "
        "Use more examples or a larger delta."
    )


def dirichlet_order(
    labels: np.ndarray,
    delta: float,
    rng: np.random.Generator | int,
    *,
    n_chunks: int | None = None,
    min_per_chunk: int = 10,
    max_tries: int = 1000,
) -> np.ndarray:
    """NOTE's non-i.i.d. order (``dirichlet:<delta>``): chunk after chunk, inside a chunk the classes
    in a shuffled order, each as one contiguous run. Smaller ``delta`` means stronger label correlation."""
    rng = as_generator(rng)
    chunks = dirichlet_chunks(labels, delta, rng, n_chunks=n_chunks, min_per_chunk=min_per_chunk, max_tries=max_tries)
    return _emit(chunks, rng, len(labels))


def slots_order(
    labels: np.ndarray, gamma: float, rng: np.random.Generator | int, *, n_slots: int | None = None
) -> np.ndarray:
    """RoTTA's variant (``slots:<gamma>``): ``min(n_cls, 100)`` slots, one ``Dir(γ)`` row
    of slot proportions per class, no balancing; slot after slot, class runs shuffled inside a slot.
    (Unlike RoTTA, each class's indices are shuffled first, so the seed also varies the order within a
    class.)"""
    rng = as_generator(rng)
    labels = _as_labels(labels)
    if not (gamma > 0 and math.isfinite(gamma)):
        raise ValueError(f"the Dirichlet concentration gamma must be a positive finite number, got {gamma}")
    classes = _class_indices(labels, rng)
    n_slots = n_slots if n_slots is not None else min(len(classes), 100)
    proportions = rng.dirichlet(np.full(n_slots, float(gamma)), size=len(classes))
    slots: list[list[np.ndarray]] = [[] for _ in range(n_slots)]
    for indices, p in zip(classes, proportions):
        cuts = _cuts(p, len(indices))
        for s, piece in enumerate(np.split(indices, cuts)):
            if len(piece):
                slots[s].append(piece)
    return _emit(slots, rng, len(labels))


def long_tail_counts(n_max: int, n_classes: int, imbalance: float) -> np.ndarray:
    """The long-tailed class sizes, head to tail: ``floor(n_max * IF ** (-r / (K - 1)))`` for ranks
    ``r = 0..K-1`` (TRIBE's GLI-TTA), so the head keeps ``n_max`` and the tail ``floor(n_max / IF)``; a
    geometric sequence in between. One class keeps ``n_max``."""
    imbalance = check_imbalance(imbalance)
    ranks = np.arange(n_classes, dtype=np.float64)
    return np.floor(n_max * np.power(1.0 / imbalance, ranks / max(n_classes - 1, 1))).astype(np.int64)


def imbalanced_subset(
    labels: np.ndarray, imbalance: float, rng: np.random.Generator | int, *, ranking: str = "fixed"
) -> np.ndarray:
    """The indices kept by a long-tailed class prior with imbalance factor ``imbalance`` (ascending).

    The present classes are ranked head to tail (``fixed``: ascending class id; ``random``: a permutation
    drawn from ``rng``); the class of rank ``r`` keeps a uniformly drawn subset of
    :func:`long_tail_counts` ``(n_min, K, IF)[r]`` of its images, ``n_min`` the smallest class's size (so
    every class can supply its share). ValueError if the tail class would keep no image.
    """
    rng = as_generator(rng)
    labels = _as_labels(labels)
    imbalance = check_imbalance(imbalance)
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {', '.join(RANKINGS)}, got {ranking!r}")
    classes, sizes = np.unique(labels, return_counts=True)
    if len(classes) == 0:
        return np.zeros(0, dtype=np.int64)
    n_min = int(sizes.min())
    counts = long_tail_counts(n_min, len(classes), imbalance)
    if counts[-1] < 1:
        raise ValueError(
            f"imbalanced:{format_number(imbalance)}: the tail class would keep no image (the smallest class has "
            f"{n_min} images, and the tail keeps 1/{format_number(imbalance)} of it); use at least "
            f"{math.ceil(imbalance)} images per class (more examples) or a smaller imbalance factor"
        )
    rank_of = rng.permutation(len(classes)) if ranking == "random" else np.arange(len(classes))
    kept = [rng.permutation(np.flatnonzero(labels == k))[: counts[rank_of[i]]] for i, k in enumerate(classes)]
    return np.sort(np.concatenate(kept))


def order_indices(labels: np.ndarray, order: str | Order, rng: np.random.Generator | int) -> np.ndarray:
    """Dispatch on an order name (see :func:`parse_order`); returns the index permutation, or for an
    ``imbalanced:`` order the kept indices in their visiting order (a selection without repeats)."""
    rng = as_generator(rng)
    parsed = parse_order(order)
    if parsed.imbalance is not None:
        labels = _as_labels(labels)
        kept = imbalanced_subset(labels, parsed.imbalance, rng, ranking=parsed.ranking)
        return kept[order_indices(labels[kept], Order(parsed.kind, parsed.concentration), rng)]
    if parsed.kind == "iid":
        return iid_order(labels, rng)
    if parsed.kind == "sorted":
        return sorted_order(labels, rng)
    concentration = cast(float, parsed.concentration)  # parse_order gives one to dirichlet and slots
    if parsed.kind == "dirichlet":
        return dirichlet_order(labels, concentration, rng)
    return slots_order(labels, concentration, rng)


@dataclass(frozen=True)
class LabelStats:
    """How non-i.i.d. a stream is: averages over its batches, and the shape of its label sequence.

    ``mean_distinct_labels``: distinct labels per batch. ``mean_tv_distance``: total-variation distance
    between a batch's label histogram and the label distribution of the batch's domain (of the whole
    union for ``mixed`` and ``unitta``); 0 for a perfectly representative batch, near 1 for a single-class
    batch. ``imbalance_ratio``: the largest class count over the smallest (present) one, per domain (per
    union), averaged; about IF for an ``imbalanced:<IF>`` order, 1 for a balanced set.
    ``same_label_rate``: the fraction of consecutive samples that share a label. ``mean_run_length``: the
    mean length of the maximal runs of one label. The last two are taken inside each domain (union).
    """

    mean_distinct_labels: float
    mean_tv_distance: float
    n_batches: int
    imbalance_ratio: float = 1.0
    same_label_rate: float = 0.0
    mean_run_length: float = 1.0


def batch_label_measures(labels: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per batch of the ordered ``labels`` (last short batch kept): distinct labels and TV distance to
    the distribution of all of ``labels``."""
    labels = _as_labels(labels)
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if len(labels) == 0:
        return np.zeros(0), np.zeros(0)
    _, codes = np.unique(labels, return_inverse=True)
    n_batches = -(-len(labels) // batch_size)
    counts = np.zeros((n_batches, codes.max() + 1))
    np.add.at(counts, (np.arange(len(labels)) // batch_size, codes), 1)
    histograms = counts / counts.sum(axis=1, keepdims=True)
    reference = counts.sum(axis=0) / len(labels)
    return (counts > 0).sum(axis=1).astype(float), 0.5 * np.abs(histograms - reference).sum(axis=1)


def sequence_measures(values: np.ndarray) -> tuple[float, int, int, int]:
    """Of one ordered sequence of integers (labels, or domain ids): the largest over the smallest count
    of its distinct values, the number of consecutive pairs that repeat a value, the number of
    consecutive pairs, and the number of maximal runs of one value."""
    values = np.asarray(values)
    if len(values) == 0:
        return 1.0, 0, 0, 0
    _, counts = np.unique(values, return_counts=True)
    repeats = int(np.count_nonzero(values[1:] == values[:-1]))
    return float(counts.max() / counts.min()), repeats, len(values) - 1, len(values) - repeats


def label_stats(labels: np.ndarray | list[np.ndarray], batch_size: int) -> LabelStats:
    """:class:`LabelStats` of one ordered label sequence cut into batches of ``batch_size``, or of a list
    of them (one per domain: batches never straddle two, and the sequence measures stay inside each)."""
    sequences = labels if isinstance(labels, list) else [labels]
    measured = [batch_label_measures(seq, batch_size) for seq in sequences]
    distinct = np.concatenate([m[0] for m in measured])
    tv = np.concatenate([m[1] for m in measured])
    shapes = [sequence_measures(seq) for seq in sequences if len(seq)]
    pairs = sum(shape[2] for shape in shapes)
    runs = sum(shape[3] for shape in shapes)
    return LabelStats(
        float(distinct.mean()) if len(distinct) else 0.0,
        float(tv.mean()) if len(tv) else 0.0,
        len(tv),
        imbalance_ratio=float(np.mean([shape[0] for shape in shapes])) if shapes else 1.0,
        same_label_rate=sum(shape[1] for shape in shapes) / pairs if pairs else 0.0,
        mean_run_length=sum(len(seq) for seq in sequences) / runs if runs else 1.0,
    )
