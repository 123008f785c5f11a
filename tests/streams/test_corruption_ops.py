"""The fast paths inside the corruptions against plain, independent formulations (docs/corruptions.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tta_streams.corruptions import _ops, corrupt
from tta_streams.corruptions._rng import ImageRNG
from tta_streams.corruptions.weather import plasma_fractal


def reference_plasma(rng: ImageRNG, size: int, wibble_decay: float) -> torch.Tensor:
    """Diamond-square as the reference scripts write it: strided writes into one full-size map."""
    m = torch.zeros(rng.n, size, size)
    step, wibble, level = size, 100.0, 0
    while step >= 2:
        half = step // 2

        def wibbled(total: torch.Tensor, tag: str, wibble: float = wibble, level: int = level) -> torch.Tensor:
            return total / 4 + wibble * rng.uniform(f"{tag}{level}", tuple(total.shape[1:]), -wibble, wibble)

        ul = m[:, 0:size:step, 0:size:step]
        sq = ul + torch.roll(ul, -1, dims=1)
        m[:, half:size:step, half:size:step] = wibbled(sq + torch.roll(sq, -1, dims=2), "square")
        dr = m[:, half:size:step, half:size:step]
        ul = m[:, 0:size:step, 0:size:step]
        lt = dr + torch.roll(dr, 1, dims=1) + ul + torch.roll(ul, -1, dims=2)
        m[:, 0:size:step, half:size:step] = wibbled(lt, "diamond_h")
        tt = dr + torch.roll(dr, 1, dims=2) + ul + torch.roll(ul, -1, dims=1)
        m[:, half:size:step, 0:size:step] = wibbled(tt, "diamond_v")
        step //= 2
        wibble /= wibble_decay
        level += 1
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


@pytest.mark.parametrize("size", [2, 8, 32, 256])
def test_plasma_pyramid_equals_the_strided_reference_algorithm(size):
    rng = ImageRNG(7, "fog", 5, torch.arange(40, 80))  # 40 images: several chunks at size 256
    ours = plasma_fractal(rng, size, 1.4, torch.device("cpu"))
    assert torch.allclose(ours, reference_plasma(rng, size, 1.4), atol=1e-6)


def test_plasma_of_an_image_does_not_depend_on_its_batch():
    big = plasma_fractal(ImageRNG(0, "fog", 3, torch.arange(50)), 256, 2.0, torch.device("cpu"))
    alone = plasma_fractal(ImageRNG(0, "fog", 3, torch.arange(37, 38)), 256, 2.0, torch.device("cpu"))
    assert torch.equal(big[37:38], alone)


@pytest.mark.parametrize("side", [28, 32, 64, 224])
def test_fog_map_is_the_smallest_power_of_two_covering_the_image(side):
    x = torch.randint(0, 256, (3, 3, side, side), dtype=torch.uint8)
    strength, decay = 1.5, 1.75  # the CIFAR table at severity 5
    size = {28: 32, 32: 32, 64: 64, 224: 256}[side]
    rng = ImageRNG(0, "fog", 5, torch.arange(3))
    fractal = plasma_fractal(rng, size, decay, torch.device("cpu"))[:, None, :side, :side]
    xf = x.float() / 255
    peak = xf.amax(dim=(1, 2, 3), keepdim=True)
    expected = ((xf + strength * fractal) * peak / (peak + strength)).clamp(0, 1) * 255
    out = corrupt(x, "fog", 5, seed=0, table="cifar")
    assert (out.float() - expected).abs().max() <= 1  # uint8 conversion only


@pytest.mark.parametrize("k", [3, 7, 9, 15, 21])
def test_filter2d_is_correlation_with_reflect101_borders(k):
    g = torch.Generator().manual_seed(k)
    x = torch.rand(4, 2, 17, 23, generator=g)
    kernel = torch.rand(k, k, generator=g)
    kernel /= kernel.sum()
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)), mode="reflect")
    expected = F.conv2d(
        torch.from_numpy(padded).reshape(8, 1, 17 + k - 1, 23 + k - 1).double(), kernel.double()[None, None]
    ).reshape(4, 2, 17, 23)
    assert torch.allclose(_ops.filter2d(x, kernel).double(), expected, atol=1e-5)


SCIPY_MODE = {"replicate": "nearest", "reflect101": "mirror", "symmetric": "reflect"}


@pytest.mark.parametrize("border", sorted(SCIPY_MODE))
@pytest.mark.parametrize("shape", [(2, 3, 9, 14), (1, 1, 530, 6)])  # matrix path; conv path (> 512)
def test_separable_filter_matches_scipy_correlate1d(border, shape):
    from scipy import ndimage

    g = torch.Generator().manual_seed(1)
    x = torch.rand(*shape, generator=g)
    kh, kw = torch.rand(7, generator=g, dtype=torch.float64), torch.rand(25, generator=g, dtype=torch.float64)
    expected = ndimage.correlate1d(x.double().numpy(), kh.numpy(), axis=2, mode=SCIPY_MODE[border])
    expected = ndimage.correlate1d(expected, kw.numpy(), axis=3, mode=SCIPY_MODE[border])
    ours = _ops.separable_filter(x, kh, kw, border)
    assert torch.allclose(ours.double(), torch.from_numpy(expected), atol=1e-5)
