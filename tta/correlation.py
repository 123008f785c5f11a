"""Label-free measures of how label-correlated and how class-imbalanced a test stream is, from the model's
predictions alone.

The true measure (``tta_streams.Stream.label_stats().mean_tv_distance``, :doc:`/streams`) is the mean over
batches of the total variation distance between a batch's label histogram and its domain's label distribution:
about 0.1-0.2 for i.i.d. batches of 64 (sampling noise alone), near 1 for a class-sorted stream.
:class:`CorrelationMeter` computes the same quantity with the two things a user lacks replaced by what the
model gives: each batch's labels by its predicted classes (argmax), and the domain's label distribution, known
only in hindsight, by the running distribution of the classes predicted before this batch. It needs no stream
object, so it works on any data; it costs one ``bincount`` per batch.

Two things make it differ from the true value: misclassifications (they spread a correlated batch's
predictions over more classes, so it reads lower), and the online reference (a stream that shows its
classes one after another has a reference made of the classes seen so far, so it reads lower early on;
the first batch has no reference and is not counted). To read a value, compare it with
:attr:`CorrelationMeter.iid_level`, what i.i.d. batches of the same size from the same class distribution
would give on average: the distance of a finite batch is never 0. How to read it and which policy it
points to: :doc:`/which_policy`.

The same running histogram of predicted classes gives the imbalance: :attr:`CorrelationMeter.imbalance_factor`
reads it as the geometric class prior the benchmark's imbalanced streams draw from (the head class ``IF``
times as frequent as the tail) and :attr:`CorrelationMeter.balanced_level` is what a balanced stream of as
many predictions would read from sampling noise alone. :meth:`CorrelationMeter.verdict` puts the two
readings side by side: whether the stream looks correlated, imbalanced, both or neither.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor


def total_variation(p: Tensor, q: Tensor) -> float:
    """Total variation distance ``0.5 sum |p - q|`` between two distributions over the same classes."""
    return 0.5 * float((p - q).abs().sum())


def expected_iid_distance(distribution: Tensor, batch_size: int) -> float:
    """Mean TV distance between the histogram of ``batch_size`` i.i.d. draws from ``distribution`` and the
    distribution itself: ``0.5 sum_k E|X_k / B - q_k|``, ``X_k ~ Binomial(B, q_k)``, each term exact by de
    Moivre's mean absolute deviation ``E|X - Bq| = 2 (m + 1) C(B, m + 1) q^(m + 1) (1 - q)^(B - m)``,
    ``m = floor(Bq)`` (in logs, so large batches do not overflow)."""
    total = 0.0
    for q in distribution.tolist():
        if 0.0 < q < 1.0:
            m = math.floor(batch_size * q)
            log_term = (
                math.lgamma(batch_size + 1)
                - math.lgamma(m + 2)
                - math.lgamma(batch_size - m)
                + (m + 1) * math.log(q)
                + (batch_size - m) * math.log1p(-q)
            )
            total += 2 * (m + 1) * math.exp(log_term) / batch_size
    return 0.5 * total


def imbalance_factor(counts: Tensor) -> float:
    """The imbalance factor of a class histogram read as a geometric prior: with the classes sorted from the
    most to the least frequent (rank ``r = 0 .. K - 1``), the least-squares slope ``b`` of
    ``log(count_r + 1/2)`` against ``r`` gives ``IF = exp(b (K - 1))``, the head class over the tail class
    of the fitted prior. The half count keeps a class never seen finite; a fit over every class, rather than
    the largest count over the smallest, lets no single class decide. 1 for equal counts."""
    k = len(counts)
    if k < 2:
        raise ValueError(f"an imbalance factor needs at least 2 classes, got {k}")
    logs = torch.log(counts.double().sort(descending=True).values + 0.5)
    ranks = torch.arange(k, dtype=torch.float64)
    ranks = ranks - ranks.mean()
    slope = float(-(ranks * (logs - logs.mean())).sum() / ranks.square().sum())
    return math.exp(slope * (k - 1))


@lru_cache(maxsize=256)
def expected_balanced_imbalance(classes: int, samples: int, draws: int = 256) -> float:
    """Mean :func:`imbalance_factor` of the histogram of ``samples`` draws from ``classes`` equally likely
    classes: what a balanced stream reads from sampling noise alone (Monte Carlo over ``draws`` histograms
    from a fixed seed, so the same arguments always give the same value)."""
    rng = np.random.default_rng(0)
    histograms = rng.multinomial(samples, np.full(classes, 1.0 / classes), size=draws)
    return float(np.mean([imbalance_factor(torch.from_numpy(row)) for row in histograms]))


class CorrelationMeter:
    """Running mean of the TV distance between each batch's predicted-class histogram and the predicted-class
    distribution of all earlier batches, and the imbalance of that distribution (module doc).
    ``update(logits)`` per batch, ``value`` and ``imbalance_factor`` to read (each against its level for an
    i.i.d. balanced stream, ``iid_level`` and ``balanced_level``), ``verdict()`` for both at once,
    ``reset()`` at a domain change (a new stream).

    Args:
        correlated_margin: how far ``value`` must exceed ``iid_level`` for :meth:`verdict` to call the stream
            correlated.
        imbalanced_factor: the imbalance factor above which (and above ``balanced_level``) :meth:`verdict`
            calls the stream imbalanced.
    """

    def __init__(self, correlated_margin: float = 0.1, imbalanced_factor: float = 5.0) -> None:
        if not (isinstance(correlated_margin, int | float) and 0 <= correlated_margin < 1):
            raise ValueError(
                f"CorrelationMeter: correlated_margin must be a number in [0, 1), got {correlated_margin!r}"
            )
        if not (isinstance(imbalanced_factor, int | float) and imbalanced_factor > 1):
            raise ValueError(f"CorrelationMeter: imbalanced_factor must be a number above 1, got {imbalanced_factor!r}")
        self.correlated_margin, self.imbalanced_factor = float(correlated_margin), float(imbalanced_factor)
        self.reset()

    def reset(self) -> None:
        """Forget every batch: no reference, no value."""
        self.counts: Tensor | None = None  # predicted-class counts of all batches so far
        self.total_distance = 0.0
        self.batches = 0  # batches that had a reference (all but the first)
        self.samples = 0  # in those batches

    def update(self, logits: Tensor) -> float | None:
        """Add one batch's ``(batch, classes)`` floating-point outputs (logits or probabilities); return its
        distance to the reference, or None when there is none (the first batch). A row with a NaN or an
        infinity has no predicted class: it is left out, and a batch with no finite row changes nothing."""
        if not isinstance(logits, Tensor):
            raise TypeError(f"CorrelationMeter needs a tensor of (batch, classes) outputs, got {type(logits).__name__}")
        if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
            raise ValueError(f"CorrelationMeter needs (batch, classes) outputs, got shape {tuple(logits.shape)}")
        if not logits.dtype.is_floating_point:
            raise TypeError(
                f"CorrelationMeter needs floating-point outputs (logits or probabilities), got {logits.dtype}"
            )
        classes = logits.shape[1]
        if self.counts is not None and len(self.counts) != classes:
            raise ValueError(f"CorrelationMeter saw {len(self.counts)} classes so far, now {classes}; reset() first")
        logits = logits.detach()
        predicted = logits.argmax(1)[logits.isfinite().all(1)].cpu()
        if not len(predicted):
            return None
        batch = torch.bincount(predicted, minlength=classes).double()
        distance = None
        if self.counts is None:
            self.counts = batch
        else:
            distance = total_variation(batch / batch.sum(), self.counts / self.counts.sum())
            self.total_distance += distance
            self.batches += 1
            self.samples += len(predicted)
            self.counts += batch
        return distance

    @property
    def value(self) -> float:
        """Mean distance over the batches counted so far (0 to 1, higher is more correlated); NaN before the
        second batch."""
        return self.total_distance / self.batches if self.batches else float("nan")

    @property
    def iid_level(self) -> float:
        """What :attr:`value` would be for i.i.d. batches of the mean batch size drawn from the predicted-class
        distribution seen so far (:func:`expected_iid_distance`); NaN before the second batch."""
        if not self.batches or self.counts is None:  # counts: set by the first batch
            return float("nan")
        return expected_iid_distance(self.counts / self.counts.sum(), round(self.samples / self.batches))

    @property
    def class_distribution(self) -> Tensor | None:
        """The distribution of every class predicted so far (float64, on the CPU); None before any batch."""
        return None if self.counts is None else self.counts / self.counts.sum()

    @property
    def imbalance_factor(self) -> float:
        """The predicted classes' imbalance factor (:func:`imbalance_factor`): about ``IF`` for a long stream
        drawn from a geometric prior of factor ``IF``, near 1 for a balanced one; NaN before any batch."""
        return float("nan") if self.counts is None else imbalance_factor(self.counts)

    @property
    def balanced_level(self) -> float:
        """What :attr:`imbalance_factor` would read for a balanced stream of as many predictions
        (:func:`expected_balanced_imbalance`); NaN before any batch."""
        if self.counts is None:
            return float("nan")
        return expected_balanced_imbalance(len(self.counts), int(self.counts.sum()))

    def verdict(self) -> str:
        """``"correlated"``, ``"imbalanced"``, ``"correlated and imbalanced"`` or ``"i.i.d. and balanced"``:
        correlated when :attr:`value` exceeds :attr:`iid_level` by ``correlated_margin``, imbalanced when
        :attr:`imbalance_factor` exceeds both ``imbalanced_factor`` and :attr:`balanced_level`. ValueError
        before the second batch (nothing to read yet)."""
        if not self.batches:
            raise ValueError("CorrelationMeter.verdict: no reading before the second batch; update() it more")
        correlated = self.value > self.iid_level + self.correlated_margin
        imbalance = self.imbalance_factor
        imbalanced = imbalance > self.imbalanced_factor and imbalance > self.balanced_level
        if correlated and imbalanced:
            return "correlated and imbalanced"
        return "correlated" if correlated else "imbalanced" if imbalanced else "i.i.d. and balanced"
