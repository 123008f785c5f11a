"""Blur corruptions: defocus, glass, motion, zoom and gaussian blur.

All act per channel, so grayscale images are blurred natively. Inputs float32 in [0, 1]; outputs
float32 on the 0..255 scale.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from tta_streams.corruptions import _ops
from tta_streams.corruptions._rng import ImageRNG


@lru_cache(maxsize=32)
def disk_kernel(radius: float, alias_blur: float) -> Tensor:
    """The reference's anti-aliased disk: a normalized binary disk on a grid of half-width
    max(8, radius), smoothed by cv2.GaussianBlur (3x3, or 5x5 beyond radius 8); zero margins trimmed."""
    half = 8 if radius <= 8 else int(radius)
    ksize = 3 if radius <= 8 else 5
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).to(torch.float64)
    disk /= disk.sum()
    g = torch.exp(-((torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2) ** 2) / (2 * alias_blur**2))
    g /= g.sum()
    k = _ops.separable_filter(disk[None, None], g, g, "reflect101")[0, 0]
    nonzero = torch.nonzero(k.abs().sum(0) > 0)
    margin = int(nonzero.min()) if nonzero.numel() else half
    margin = min(margin, half)
    return k[margin : k.shape[0] - margin, margin : k.shape[1] - margin].contiguous()


def defocus_blur(x: Tensor, rng: ImageRNG, radius: float, alias_blur: float) -> Tensor:
    """cv2.filter2D with the anti-aliased disk kernel (BORDER_REFLECT_101)."""
    return _ops.filter2d(x, disk_kernel(float(radius), float(alias_blur))).clamp_(0, 1) * 255


def gaussian_blur(x: Tensor, rng: ImageRNG, sigma: float) -> Tensor:
    """skimage.filters.gaussian: sampled Gaussian, truncate 4, nearest-edge border."""
    return _ops.gaussian_filter(x, float(sigma)).clamp_(0, 1) * 255


def _local_swaps(img: np.ndarray, targets: np.ndarray, positions: np.ndarray) -> None:
    """Sequential pixel swaps of the reference, in place, vectorized over images.

    ``img`` is N x P x C (P = H*W), ``positions`` the visiting order (flat indices), ``targets``
    (steps x N) the flat index each visited pixel is swapped with, per image.
    """
    rows = np.arange(img.shape[0])
    for step, p in enumerate(positions):
        q = targets[step]
        held = img[:, p].copy()
        img[:, p] = img[rows, q]
        img[rows, q] = held


def glass_blur(x: Tensor, rng: ImageRNG, sigma: float, delta: int, iterations: int) -> Tensor:
    """Blur, locally shuffle pixels, blur again.

    The shuffle is the reference's exact algorithm: rows and columns visited from H - delta down to
    delta + 1, each pixel swapped with the one at offset (dy, dx) drawn uniformly from [-delta, delta).
    It is inherently sequential within an image, so it runs as one loop over pixel positions in numpy on
    the CPU, each step swapping that position in all images of the batch at once (the only per-position
    loop of the package; the blurs around it are batched torch).
    """
    n, c, h, w = x.shape
    blurred = torch.floor(_ops.gaussian_filter(x, float(sigma)) * 255).clamp_(0, 255)
    hs = np.arange(h - delta, delta, -1)
    ws = np.arange(w - delta, delta, -1)
    if hs.size and ws.size:
        pos_h = np.repeat(hs, ws.size)
        pos_w = np.tile(ws, hs.size)
        positions = pos_h * w + pos_w
        steps = positions.size
        # per image, per iteration and position: (dx, dy), the reference's draw order
        shifts = rng.integers("swap", (iterations, steps, 2), -delta, delta).cpu().numpy()
        img = blurred.to(torch.uint8).permute(0, 2, 3, 1).reshape(n, h * w, c).cpu().numpy().copy()
        for it in range(iterations):
            dx = shifts[:, it, :, 0]
            dy = shifts[:, it, :, 1]
            targets = ((pos_h[None, :] + dy) * w + pos_w[None, :] + dx).T.copy()  # steps x N
            _local_swaps(img, targets, positions)
        blurred = torch.from_numpy(img).to(x.device).reshape(n, h, w, c).permute(0, 3, 1, 2)
        blurred = blurred.to(torch.float32)
    out = _ops.gaussian_filter(blurred / 255.0, float(sigma))
    return out.clamp_(0, 1) * 255


def motion_blur(x: Tensor, rng: ImageRNG, radius: float, sigma: float) -> Tensor:
    """ImageMagick motion blur at an angle uniform in [-45, 45) degrees, rounded to 8 bits as the
    reference's PNG round trip does."""
    angle = rng.uniform("angle", (), -45.0, 45.0)
    out = _ops.motion_blur(x, float(radius), float(sigma), angle)
    return torch.round(out.clamp_(0, 1) * 255)


@lru_cache(maxsize=32)
def _zoom_operator(h: int, w: int, zooms: tuple[float, ...], device: str) -> Tensor:
    return _ops.clipped_zoom_matrix(h, w, zooms, include_identity=True).to(device)


def zoom_blur(x: Tensor, rng: ImageRNG, start: float, stop: float, step: float) -> Tensor:
    """Mean of the image and its centre zooms by numpy.arange(start, stop, step), as one sparse
    linear operator (precomputed per image size and severity)."""
    zooms = tuple(float(z) for z in np.arange(start, stop, step))
    op = _zoom_operator(x.shape[-2], x.shape[-1], zooms, str(x.device))
    return _ops.apply_spatial_operator(x, op).clamp_(0, 1) * 255
