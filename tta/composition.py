"""The class composition of a stream's batches, estimated from the model's own argmax: the counting of a batch's
predicted classes, the usual prediction, the lag-1 autocorrelation ``rho`` of the deviations from it, the
AR(1) guess of the next batch's composition, and the label-prior correction of the logits by that guess.

Shared by the policy ``rebalance`` (whose statistics take the estimated composition out,
:doc:`/policies/rebalance`) and the method ``prior_refine`` (which corrects and refines the outputs with it,
:doc:`/methods/prior_refine`); the equations are on those pages.

A policy that detects changes of domain counts them in a ``restarts`` buffer of its layers
(:func:`detected_changes`), so that a method can restart its own estimates with the policy's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from tta.stats import on_host

PRIOR_FLOOR = 0.01
"""The floor of an estimated class prior in the correction, as a share of the uniform one (``0.01 / K``)."""


class Prediction(NamedTuple):
    """A batch's predicted classes: ``labels`` (argmax per row), ``valid`` (rows with finite logits, the only
    ones counted), ``classes`` and ``inverse`` (``labels = classes[inverse]``), ``counts`` (valid rows per class of
    ``classes``, summed over processes) and ``images`` (valid rows, summed over processes: an int where read
    on the host)."""

    labels: Tensor
    valid: Tensor
    classes: Tensor
    inverse: Tensor
    counts: Tensor
    images: int | Tensor


class Estimates(NamedTuple):
    """The composition estimates after a batch (:func:`estimates`): its composition ``h``, the usual prediction
    ``u``, the running lag-1 products, the guess ``pi`` of the next batch's composition, the batch's deviation
    ``1/K + h - u`` (clipped at 0, renormalized) and ``rho``."""

    composition: Tensor
    usual_composition: Tensor
    lag_products: Tensor
    guess: Tensor
    deviation: Tensor
    rho: Tensor


def per_batch(rate: float, batch: int | Tensor, reference_batch: int) -> float | Tensor:
    """The rate of a batch of ``batch`` images for a ``rate`` per ``reference_batch`` images:
    ``1 - (1 - rate)^(batch / reference_batch)``, so that the old content keeps the same weight after the same
    number of images whatever the batch size; ``rate`` itself, exactly, at the reference batch."""
    if isinstance(batch, Tensor):  # a count on the device (no host sync)
        return 1.0 - (1.0 - rate) ** (batch / reference_batch)
    if not torch.compiler.is_compiling() and batch == reference_batch:  # compiled: no guard on the batch
        return rate  # exactly (1 - (1 - 0.1) is not 0.1 in floating point)
    return 1.0 - (1.0 - rate) ** (batch / reference_batch)


def predicted_classes(
    logits: Tensor,
    num_classes: int,
    dtype: torch.dtype,
    summed: Callable[[Tensor], Tensor] = lambda values: values,
    every_class: bool = False,
) -> Prediction:
    """Count the argmax of ``logits`` per class, rows with a non-finite logit left out, in ``dtype``; ``summed``
    adds the counts of every process (identity in one process). On the host only the classes predicted are
    listed; with ``every_class`` (processes combining, or off the host: static shapes, no host sync) all K."""
    logits = logits.detach()
    labels = logits.argmax(1)
    valid = logits.isfinite().all(1)
    weights = valid.to(dtype)
    if every_class or not on_host(labels):
        classes, index = torch.arange(num_classes, device=labels.device), labels
        counts = nn.functional.one_hot(labels, num_classes).to(dtype).T @ weights
    else:
        classes, index = labels.unique(return_inverse=True)
        counts = torch.zeros(len(classes), dtype=dtype).index_add_(0, index, weights)
    counts, images = summed(torch.cat([counts, weights.sum()[None]])).split([len(counts), 1])
    return Prediction(labels, valid, classes, index, counts, int(images) if on_host(images) else images[0])


def estimates(
    composition: Tensor,
    usual_composition: Tensor,
    lag_products: Tensor,
    prediction: Prediction,
    steps: Tensor,
    momentum: float,
    reference_batch: int,
) -> Estimates:
    """The estimates after a batch, from those before it (the last batch's ``composition`` ``h_(t-1)``, the
    ``usual_composition`` ``u_(t-1)``, the running ``lag_products``) and the batch's ``prediction``; ``steps``
    counts the batches since the estimates' start or restart, this one included.

    ``u`` is a running mean of ``h`` at a tenth of ``momentum``; the lag-1 products
    ``E[(h_t - u) . (h_(t-1) - u)]`` and ``E[|h_(t-1) - u|^2]`` at ``momentum`` (both rates per
    ``reference_batch`` images, at least ``1 / steps``: a cumulative mean first);
    ``rho = clip(ratio, 0, 1) * min(steps * momentum, 1)`` and the guess ``pi = 1/K + rho (h_t - u_t)``."""
    uniform = 1.0 / len(composition)
    momentum_b = per_batch(momentum, prediction.images, reference_batch)
    usual_momentum = per_batch(0.1 * momentum, prediction.images, reference_batch)
    batch = torch.zeros_like(composition).index_put_((prediction.classes,), prediction.counts.to(composition.dtype))
    batch = batch / batch.sum()
    steps = steps.to(composition.dtype)
    beta = (1.0 / steps).clamp_min(momentum_b)
    usual, last = usual_composition, composition
    lag = torch.stack([((batch - usual) * (last - usual)).sum(), (last - usual).square().sum()])
    lag = torch.lerp(lag_products, lag, beta * (steps > 1))  # the first batch has no predecessor
    usual = torch.lerp(usual, batch, (1.0 / steps).clamp_min(usual_momentum))
    deviation = (uniform + batch - usual).clamp_min(0)
    rho = (lag[0] / lag[1].clamp_min(1e-12)).clamp(0, 1) * (steps * momentum_b).clamp_max(1)
    guess = uniform + rho * (batch - usual)
    return Estimates(batch, usual, lag, guess, deviation / deviation.sum(), rho)


def prior_corrected(logits: Tensor, prior: Tensor) -> Tensor:
    """``logits + log(K max(pi_k, 0.01 / K))``: the posteriors reweighted by the estimated class prior ``pi``
    over the balanced one (Saerens et al. 2002)."""
    k = prior.shape[-1]
    return logits + torch.log(prior.clamp_min(PRIOR_FLOOR / k) * k).to(logits.dtype)


def detected_changes(layers: Iterable[nn.Module]) -> Tensor | None:
    """The changes of domain the policy ``layers`` have detected so far (the sum of their ``restarts``
    buffers), or None where no layer detects any."""
    counts: list[Tensor] = []
    for layer in layers:
        restarts = getattr(layer, "restarts", None)
        if isinstance(restarts, Tensor):
            counts.append(restarts)
    if not counts:
        return None
    return counts[0].clone() if len(counts) == 1 else torch.stack([c.to(counts[0].device) for c in counts]).sum()
