"""A label-free measure of how label-correlated a test stream is, from the model's predictions alone.

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
"""

from __future__ import annotations

import math

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


class CorrelationMeter:
    """Running mean of the TV distance between each batch's predicted-class histogram and the predicted-class
    distribution of all earlier batches (module doc). ``update(logits)`` per batch, ``value`` to read,
    ``reset()`` at a domain change (a new stream)."""

    def __init__(self) -> None:
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
