"""Noise corruptions: gaussian, shot (Poisson), impulse (salt and pepper), speckle.

All four are elementwise: grayscale images are handled natively, one draw per pixel and channel.
Inputs are float32 in [0, 1]; outputs are float32 on the 0..255 scale, as the reference returns.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from tta_streams.corruptions._rng import ImageRNG


def gaussian_noise(x: Tensor, rng: ImageRNG, std: float) -> Tensor:
    """x + N(0, std^2), clipped."""
    noise = rng.normal("noise", tuple(x.shape[1:]), scale=std)
    return (x + noise).clamp_(0, 1) * 255


def speckle_noise(x: Tensor, rng: ImageRNG, std: float) -> Tensor:
    """x + x * N(0, std^2), clipped."""
    noise = rng.normal("noise", tuple(x.shape[1:]), scale=std)
    return (x + x * noise).clamp_(0, 1) * 255


def impulse_noise(x: Tensor, rng: ImageRNG, amount: float) -> Tensor:
    """skimage's "s&p": each value is replaced with probability ``amount``, by 1 or 0 with equal odds."""
    shape = tuple(x.shape[1:])
    flipped = rng.uniform("flip", shape) <= amount
    salted = rng.uniform("salt", shape) <= 0.5
    out = torch.where(flipped, salted.to(x.dtype), x)
    return out.clamp_(0, 1) * 255


@lru_cache(maxsize=16)
def _poisson_cdf_table(photons: float) -> tuple[Tensor, int]:
    """CDFs of Poisson(v / 255 * photons) for the 256 input levels v, offset by v and flattened.

    Inverting the CDF is exact sampling; the table goes 12 standard deviations past the largest mean.
    """
    lam_max = photons
    k_max = math.ceil(lam_max + 12 * math.sqrt(lam_max) + 20)
    k = torch.arange(k_max, dtype=torch.float64)
    lam = torch.arange(256, dtype=torch.float64)[:, None] / 255.0 * photons
    logp = k * torch.log(lam.clamp_min(1e-300)) - lam - torch.lgamma(k + 1)
    pmf = torch.where(lam > 0, torch.exp(logp), (k == 0).to(torch.float64).expand_as(logp))
    cdf = torch.cumsum(pmf, dim=1).clamp_(max=1.0)
    cdf[:, -1] = 1.0
    table = cdf + torch.arange(256, dtype=torch.float64)[:, None]
    return table.reshape(-1).contiguous(), k_max


def shot_noise(x: Tensor, rng: ImageRNG, photons: float) -> Tensor:
    """Poisson(x * photons) / photons, clipped; sampled by inverting per-level CDF tables."""
    table, k_max = _poisson_cdf_table(float(photons))
    table = table.to(x.device)
    level = torch.round(x * 255).to(torch.int64)
    u = rng.uniform("poisson", tuple(x.shape[1:])).to(torch.float64)
    pos = torch.searchsorted(table, (level.to(torch.float64) + u).reshape(-1))
    counts = (pos.reshape(x.shape) - level * k_max).to(x.dtype)
    return (counts / photons).clamp_(0, 1) * 255
