"""LAME's maths (Boudiaf et al. CVPR 2022; :doc:`/methods/lame`): affinities between a batch's features, the bound
optimization of the Laplacian-regularized likelihood, and the hook that reads a classifier's input. Used by
the methods ``lame`` and ``prior_refine``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from tta.stats import on_host


def pairwise_distances(features: Tensor) -> Tensor:
    """Euclidean distances between the rows, ``(N, N)``, summed pair by pair (``torch.cdist`` without its
    matrix-product formula): ``O(N^2)`` memory and exact zeros between identical rows."""
    return torch.cdist(features, features, compute_mode="donot_use_mm_for_euclid_dist")


def valid_distances(features: Tensor, valid: Tensor | None) -> Tensor:
    """:func:`pairwise_distances`, infinite to and from the rows that are not ``valid`` (no neighbour, no
    weight); all rows with ``valid=None``."""
    if valid is None:
        return pairwise_distances(features)
    dist = pairwise_distances(torch.where(valid[:, None], features, 0))
    return dist.masked_fill(~(valid[:, None] & valid[None]), float("inf"))


def rbf_affinity(features: Tensor, knn: int, valid: Tensor | None = None) -> Tensor:
    """``exp(-d^2 / (2 sigma^2))`` for every pair, with ``sigma`` the mean over rows of the distance to the
    ``knn``-th nearest row, the row itself counted (the official ``rbf_affinity``). With ``sigma = 0`` (one
    sample, or identical ones) its limit: 1 between identical rows, 0 elsewhere, where the official code
    gives NaN. Rows that are not ``valid`` are left out: 0 to and from them, and ``sigma`` over the others
    (the farthest of them where fewer than ``knn``)."""
    dist = valid_distances(features, valid)
    nearest = dist.topk(min(knn, len(dist)), dim=-1, largest=False).values
    kth = torch.where(nearest.isfinite(), nearest, 0).amax(-1)
    sigma = kth.mean() if valid is None else torch.where(valid, kth, 0).sum() / valid.sum()
    return torch.where(dist == 0, 1.0, torch.exp(-dist.square() / (2 * sigma.square())))


def knn_affinity(features: Tensor, knn: int, valid: Tensor | None = None) -> Tensor:
    """1 from each row to its ``knn`` nearest other rows, else 0 (the official ``kNN_affinity``: the nearest
    row found, the row itself, is dropped). Rows that are not ``valid`` are left out: 0 to and from them."""
    dist = valid_distances(features, valid)
    neighbours = dist.topk(min(knn + 1, len(dist)), dim=-1, largest=False).indices[:, 1:]
    kernel = torch.zeros_like(dist).scatter_(1, neighbours, 1.0)
    return kernel if valid is None else kernel * (valid[:, None] & valid[None])


def linear_affinity(features: Tensor, knn: int, valid: Tensor | None = None) -> Tensor:
    """The rows' dot products (the official ``linear_affinity``), 0 to and from rows that are not ``valid``;
    ``knn`` is unused."""
    if valid is not None:
        features = torch.where(valid[:, None], features, 0)
    return features @ features.T


AFFINITIES: dict[str, Callable[[Tensor, int, Tensor | None], Tensor]] = {
    "rbf": rbf_affinity,
    "knn": knn_affinity,
    "linear": linear_affinity,
}


def lame_refinement(
    logits: Tensor,
    features: Tensor,
    affinity: str = "knn",
    knn: int = 5,
    force_symmetry: bool = False,
    weight: Tensor | float = 1.0,
) -> Tensor:
    """LAME's ``log Y`` for a batch's ``logits``, the ``affinity`` between its L2-normalized ``features``
    (flattened per row) times ``weight``; differentiable in ``logits``, the affinity a constant.

    A row whose logits or features are not finite is left out: it is no one's neighbour, counts in no
    bandwidth, and is returned as given, so the other rows are those of the batch without it."""
    features = features.detach().float().flatten(1)
    valid = logits.isfinite().all(1) & features.isfinite().all(1)
    clean = torch.where(valid[:, None], features, 0)
    kernel = AFFINITIES[affinity](nn.functional.normalize(clean, p=2, dim=-1), knn, valid)
    if force_symmetry:
        kernel = (kernel + kernel.T) / 2
    if isinstance(weight, Tensor):
        weight = weight.detach().to(kernel.dtype)
    unary = -torch.log(torch.where(valid[:, None], logits.float(), 0).softmax(1) + 1e-10)
    refined = laplacian_optimization(unary, weight * kernel, valid).to(logits.dtype)
    return torch.where(valid[:, None], refined, logits)


def laplacian_optimization(unary: Tensor, kernel: Tensor, valid: Tensor | None = None, max_steps: int = 100) -> Tensor:
    """LAME's bound optimization: ``Y <- softmax(-unary + kernel Y)`` from ``Y = softmax(-unary)``, until the
    energy ``sum(unary Y - (kernel Y) Y + Y log Y)`` changes by at most 1e-8 of itself (checked from the
    third step on) or ``max_steps``; returns ``log Y`` (the official code returns ``Y``). Where reading the
    energy would be a host sync or a graph break (off the CPU, under ``torch.compile``), all ``max_steps``
    run: the same fixed point, no early stop.
    Rows that are not ``valid`` count in no energy (their kernel rows and columns must be 0)."""
    y = (-unary).softmax(-1)
    old_energy = float("inf")
    check = on_host(unary)
    for step in range(max_steps):
        pairwise = kernel @ y
        exponent = pairwise - unary
        y = exponent.softmax(-1)
        if not check:
            continue
        terms = unary * y - pairwise * y + y * torch.log(y.clip(1e-20))
        energy = (terms if valid is None else terms[valid]).sum().item()
        if step > 1 and abs(energy - old_energy) <= 1e-8 * abs(old_energy):
            break
        old_energy = energy
    return exponent.log_softmax(-1)


class FeatureCapture:
    """Forward pre-hook on the classifier: keeps its input of the first call after :meth:`arm`."""

    def __init__(self) -> None:
        self.armed = False
        self.features: Tensor | None = None

    def arm(self) -> None:
        self.armed, self.features = True, None

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.armed:
            self.armed, self.features = False, args[0]

    def logits_and_features(
        self,
        forward: Callable[[], Tensor],
        who: str,
        *,
        width: int | None = None,
        required: bool = True,
        hint: str = "",
    ) -> tuple[Tensor, Tensor | None]:
        """Run ``forward`` (the model on a batch) and return its logits with the classifier's input of that
        forward. When ``required``, an input that is missing or not ``(batch, width)`` is a ValueError naming
        ``who`` (and ``hint``); otherwise it is returned as it is (None when the classifier was not called)."""
        self.arm()
        logits = forward()
        features, self.features = self.features, None
        fits = (
            features is not None
            and features.dim() == 2
            and len(features) == len(logits)
            and (width is None or features.shape[1] == width)
        )
        if required and not fits:
            got = "no call" if features is None else f"an input of shape {tuple(features.shape)}"
            if features is None:  # the one way a classifier that is called can miss its hook
                got += (
                    " (under torch.compile, a graph compiled before the hook was registered, for this model or another "
                    "of its architecture, runs without it: attach the method before the compiled model's first call, "
                    "or call torch._dynamo.reset() after attaching it)"
                )
            raise ValueError(
                f"{who} needs the (batch, {width or 'features'}) input of the model's last nn.Linear for a batch of "
                f"{len(logits)}; it got {got}{hint}"
            )
        return logits, features
