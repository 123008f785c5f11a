"""Shared statistics maths for all policies (spec M0): float32 moments, pooled merges, normalization."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def batch_moments(x: Tensor) -> tuple[Tensor, Tensor, int]:
    """Per-channel mean and biased variance over ``(B, *S)`` in float32, and the count ``n`` (spec M0)."""
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x.detach().float(), dim=dims, correction=0)
    return mean, var, elements_per_channel(x)


def instance_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-instance, per-channel mean and biased variance over the spatial dims ``S``, float32, ``(B, C)``."""
    dims = list(range(2, x.dim()))
    var, mean = torch.var_mean(x.detach().float(), dim=dims, correction=0)
    return mean, var


def elements_per_channel(x: Tensor) -> int:
    """``n = B * prod(S)``: how many values one channel's batch statistics pool (spec M0)."""
    return x.numel() // x.shape[1]


def unbiased(var: Tensor, n: int) -> Tensor:
    """Unbiased variance ``var * n / (n - 1)`` from the biased one; needs ``n >= 2``."""
    return var * (n / (n - 1))


def merge_moments(
    count: Tensor, mean: Tensor, m2: Tensor, batch_count: int, batch_mean: Tensor, batch_var: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact pooled update of (count, mean, sum of squared deviations) with one batch (Chan et al. 1979).

    ``m2`` gains the batch's own squared deviations plus the between-batch term
    ``delta^2 * count * batch_count / total``, so the result equals the moments of the concatenation
    (spec M3).
    """
    total = count + batch_count
    weight = batch_count / torch.as_tensor(total, dtype=mean.dtype, device=mean.device)
    delta = batch_mean.to(mean.dtype) - mean
    new_mean = mean + delta * weight
    new_m2 = m2 + batch_var.to(m2.dtype) * batch_count + delta.square() * (count * weight)
    return total, new_mean, new_m2


def normalize(
    x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """``weight * (x - mean) / sqrt(var + eps) + bias`` with per-channel statistics; keeps ``x``'s dtype.

    Float32 statistics normalize low-precision inputs directly (the kernel accumulates in float32);
    they are cast only where the affine parameters are low precision too (a ``model.bfloat16()``).
    """
    if weight is not None and weight.dtype != mean.dtype:
        mean, var = mean.to(weight.dtype), var.to(weight.dtype)
    return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)


def normalize_per_instance(
    x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """As :func:`normalize` with statistics of shape ``(B, C)``: one mean and variance per instance."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    view = (*scale.shape, *([1] * (x.dim() - 2)))
    out = torch.addcmul(shift.view(view), x.float() if x.dtype != torch.float32 else x, scale.view(view))
    return out.to(x.dtype)
