"""LAME's maths (Boudiaf et al. CVPR 2022; spec M13): affinities between a batch's features, the bound
optimization of the Laplacian-regularized likelihood, and the hook that reads a classifier's input. Used by
the method ``lame`` and by the policy ``rebalance``'s refinement."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from tta.stats import on_host


def pairwise_distances(features: Tensor) -> Tensor:
    """Euclidean distances between the rows, ``(N, N)``, from the explicit differences (exact zeros on the
    diagonal, unlike a matrix-product formula)."""
    return torch.linalg.vector_norm(features[None] - features[:, None], dim=-1)


def rbf_affinity(features: Tensor, knn: int) -> Tensor:
    """``exp(-d^2 / (2 sigma^2))`` for every pair, with ``sigma`` the mean over rows of the distance to the
    ``knn``-th nearest row, the row itself counted (the official ``rbf_affinity``). With ``sigma = 0`` (one
    sample, or identical ones) its limit: 1 between identical rows, 0 elsewhere, where the official code
    gives NaN."""
    dist = pairwise_distances(features)
    sigma = dist.topk(min(knn, len(dist)), dim=-1, largest=False).values[:, -1].mean()
    return torch.where(dist == 0, 1.0, torch.exp(-dist.square() / (2 * sigma.square())))


def knn_affinity(features: Tensor, knn: int) -> Tensor:
    """1 from each row to its ``knn`` nearest other rows, else 0 (the official ``kNN_affinity``: the nearest
    row found, the row itself, is dropped)."""
    dist = pairwise_distances(features)
    neighbours = dist.topk(min(knn + 1, len(dist)), dim=-1, largest=False).indices[:, 1:]
    return torch.zeros_like(dist).scatter_(1, neighbours, 1.0)


def linear_affinity(features: Tensor, knn: int) -> Tensor:
    """The rows' dot products (the official ``linear_affinity``); ``knn`` is unused."""
    return features @ features.T


AFFINITIES: dict[str, Callable[[Tensor, int], Tensor]] = {
    "rbf": rbf_affinity, "knn": knn_affinity, "linear": linear_affinity,
}


def laplacian_optimization(unary: Tensor, kernel: Tensor, max_steps: int = 100) -> Tensor:
    """LAME's bound optimization: ``Y <- softmax(-unary + kernel Y)`` from ``Y = softmax(-unary)``, until the
    energy ``sum(unary Y - (kernel Y) Y + Y log Y)`` changes by at most 1e-8 of itself (checked from the
    third step on) or ``max_steps``; returns ``log Y`` (the official code returns ``Y``). Where reading the
    energy would be a host sync or a graph break (off the CPU, under ``torch.compile``), all ``max_steps``
    run: the same fixed point, no early stop."""
    y = (-unary).softmax(-1)
    old_energy = float("inf")
    check = on_host(unary)
    for step in range(max_steps):
        pairwise = kernel @ y
        exponent = pairwise - unary
        y = exponent.softmax(-1)
        if not check:
            continue
        energy = (unary * y - pairwise * y + y * torch.log(y.clip(1e-20))).sum().item()
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
