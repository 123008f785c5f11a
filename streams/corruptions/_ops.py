"""Batched image operations shared by the corruptions: padding, separable and 2-D filters, bilinear
sampling, colour helpers and ImageMagick's motion blur. Images are float32 N x C x H x W."""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as cv2.COLOR_RGB2GRAY and PIL "L"


def border_index(i: Tensor, n: int, border: str) -> Tensor:
    """Map integer positions (any range) into [0, n) under a border rule.

    ``replicate`` = scipy "nearest" / cv2 BORDER_REPLICATE; ``reflect101`` = cv2's default
    BORDER_REFLECT_101 (torch "reflect"); ``symmetric`` = scipy "reflect" / cv2 BORDER_REFLECT.
    """
    if n == 1:
        return torch.zeros_like(i)
    if border == "replicate":
        return i.clamp(0, n - 1)
    if border == "reflect101":
        m = torch.remainder(i, 2 * n - 2)
        return torch.where(m >= n, 2 * n - 2 - m, m)
    if border == "symmetric":
        m = torch.remainder(i, 2 * n)
        return torch.where(m >= n, 2 * n - 1 - m, m)
    raise ValueError(f"unknown border {border!r}")


def pad(x: Tensor, top: int, bottom: int, left: int, right: int, border: str) -> Tensor:
    """Pad the last two dims by any amount (even beyond the image size) under ``border``."""
    h, w = x.shape[-2:]
    rows = border_index(torch.arange(-top, h + bottom, device=x.device), h, border)
    cols = border_index(torch.arange(-left, w + right, device=x.device), w, border)
    return x.index_select(-2, rows).index_select(-1, cols)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> Tensor:
    """scipy.ndimage's sampled Gaussian: radius int(truncate * sigma + 0.5), normalized (float64)."""
    radius = int(truncate * float(sigma) + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


MATRIX_FILTER_MAX_SIDE = 512  # up to this side a 1-D filter runs as a matrix product (faster than a convolution)


@lru_cache(maxsize=64)
def filter_matrix(n: int, kernel: tuple[float, ...], border: str) -> Tensor:
    """Correlation with an odd, centred 1-D kernel along an axis of length n, border folding
    included, as an n x n float64 matrix: ``y = M @ x``."""
    r = len(kernel) // 2
    cols = border_index(torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None, :], n, border)
    weights = torch.tensor(kernel, dtype=torch.float64)[None, :].expand(n, -1).contiguous()
    return torch.zeros(n, n, dtype=torch.float64).scatter_add_(1, cols, weights)


def separable_filter(x: Tensor, kernel_h: Tensor, kernel_w: Tensor, border: str) -> Tensor:
    """Correlate every channel of every image with a separable kernel (odd lengths, centred).

    Images up to MATRIX_FILTER_MAX_SIDE go through two small matrix products (``M_h @ x @ M_w^T``),
    larger ones through padded 1-D convolutions; both are the same linear map.
    """
    n, c, h, w = x.shape
    if max(h, w) <= MATRIX_FILTER_MAX_SIDE:
        mh = filter_matrix(h, tuple(kernel_h.tolist()), border).to(x.dtype).to(x.device)
        mw = filter_matrix(w, tuple(kernel_w.tolist()), border).to(x.dtype).to(x.device)
        return mh @ x @ mw.T
    y = x.reshape(n * c, 1, h, w)
    kw = kernel_w.to(x.dtype).to(x.device)
    kh = kernel_h.to(x.dtype).to(x.device)
    rw, rh = kw.numel() // 2, kh.numel() // 2
    if rw:
        y = F.conv2d(pad(y, 0, 0, rw, rw, border), kw.view(1, 1, 1, -1))
    if rh:
        y = F.conv2d(pad(y, rh, rh, 0, 0, border), kh.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def gaussian_filter(x: Tensor, sigma: float, border: str = "replicate", truncate: float = 4.0) -> Tensor:
    """scipy.ndimage.gaussian_filter over H and W (skimage.filters.gaussian's default border)."""
    if sigma <= 1e-15:
        return x
    k = gaussian_kernel1d(sigma, truncate)
    return separable_filter(x, k, k, border)


FFT_MIN_KERNEL_AREA = 81  # 9x9: from here on the FFT beats F.conv2d on 32 and 224 px images


def filter2d(x: Tensor, kernel: Tensor, border: str = "reflect101") -> Tensor:
    """cv2.filter2D: correlation with an odd 2-D kernel anchored at its centre.

    Kernels of 9x9 and larger go through the FFT, as cv2.filter2D itself does for large kernels (2-5x
    faster than a direct convolution here; float32 round-off ~1e-6 of the 0..1 range).
    """
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    kernel = kernel.to(dtype=x.dtype, device=x.device)
    y = pad(x.reshape(n * c, 1, h, w), kh // 2, kh // 2, kw // 2, kw // 2, border)
    if kh * kw < FFT_MIN_KERNEL_AREA:
        return F.conv2d(y, kernel.view(1, 1, kh, kw)).reshape(n, c, h, w)
    size = tuple(y.shape[-2:])
    spectrum = torch.fft.rfft2(y, s=size) * torch.fft.rfft2(torch.flip(kernel, (0, 1)), s=size)
    full = torch.fft.irfft2(spectrum, s=size)  # circular convolution; the valid part is exact
    return full[..., kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w].reshape(n, c, h, w)


def bilinear_sample(x: Tensor, ys: Tensor, xs: Tensor, border: str) -> Tensor:
    """Sample ``x`` (N,C,H,W) at per-image coordinates ``ys``, ``xs`` (N,H',W', pixel units)."""
    n, c, h, w = x.shape
    y0 = torch.floor(ys)
    x0 = torch.floor(xs)
    fy = (ys - y0).unsqueeze(1)
    fx = (xs - x0).unsqueeze(1)
    y0 = y0.to(torch.int64)
    x0 = x0.to(torch.int64)
    ya, yb = border_index(y0, h, border), border_index(y0 + 1, h, border)
    xa, xb = border_index(x0, w, border), border_index(x0 + 1, w, border)
    flat = x.reshape(n, c, h * w)
    out_shape = (n, c, *ys.shape[1:])

    def at(yi: Tensor, xi: Tensor) -> Tensor:
        idx = (yi * w + xi).reshape(n, 1, -1).expand(n, c, -1)
        return flat.gather(2, idx).reshape(out_shape)

    top = at(ya, xa) * (1 - fx) + at(ya, xb) * fx
    bottom = at(yb, xa) * (1 - fx) + at(yb, xb) * fx
    return top * (1 - fy) + bottom * fy


def to_rgb(x: Tensor) -> Tensor:
    """Replicate a grayscale batch to three channels (colour-only operations)."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def luma(x: Tensor) -> Tensor:
    """ITU-R 601-2 luma of an RGB batch, N x 1 x H x W; grayscale passes through."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return LUMA[0] * r + LUMA[1] * g + LUMA[2] * b


def motion_kernel(radius: float, sigma: float) -> Tensor:
    """ImageMagick MotionBlurImage weights: width 2*ceil(radius)+1, one-sided Gaussian, normalized."""
    width = int(2 * math.ceil(radius) + 1)
    i = torch.arange(width, dtype=torch.float64)
    k = torch.exp(-(i * i) / (2.0 * sigma * sigma))
    return k / k.sum()


MOTION_CHUNK_ELEMENTS = 3 << 20  # padded pixels per pass of motion_blur's gathers


def motion_blur(x: Tensor, radius: float, sigma: float, angle_deg: Tensor) -> Tensor:
    """ImageMagick's motion blur (what the reference calls through Wand), one angle per image.

    Output pixel (y, x) = sum_i k_i * image(y + round(i sin a), x + round(i cos a)), edges replicated
    (ImageMagick's default virtual pixels). A one-sided streak: the reference's kernel, not a centred
    line.
    """
    n, c, h, w = x.shape
    k = motion_kernel(radius, sigma)
    width = k.numel()
    chunk = max(1, MOTION_CHUNK_ELEMENTS // (c * (h + 2 * width) * (w + 2 * width)))
    if n > chunk:  # the taps' gathers run 2x faster on a few MB at a time than on a whole big batch
        return torch.cat(
            [motion_blur(x[i : i + chunk], radius, sigma, angle_deg[i : i + chunk]) for i in range(0, n, chunk)]
        )
    a = angle_deg.to(torch.float64) * (math.pi / 180.0)
    i = torch.arange(width, dtype=torch.float64, device=x.device)
    # ImageMagick: offset.x = ceil(i*cos(a) - 0.5), offset.y = ceil(i*sin(a) - 0.5)
    ox = torch.ceil(i[None, :] * torch.cos(a)[:, None] - 0.5).to(torch.int64)
    oy = torch.ceil(i[None, :] * torch.sin(a)[:, None] - 0.5).to(torch.int64)
    p = width - 1
    xp = pad(x, p, p, p, p, "replicate")
    wp = w + 2 * p
    flat = xp.reshape(n, c, -1)
    rows = torch.arange(h, device=x.device) + p
    cols = torch.arange(w, device=x.device) + p
    base = (rows[:, None] * wp + cols[None, :]).reshape(1, -1)
    shifts = oy * wp + ox  # (n, width)
    out = torch.zeros(n, c, h * w, dtype=x.dtype, device=x.device)
    for j in range(width):
        idx = (base + shifts[:, j : j + 1]).unsqueeze(1).expand(n, c, -1)
        out.add_(flat.gather(2, idx), alpha=float(k[j]))
    return out.reshape(n, c, h, w)


@lru_cache(maxsize=64)
def _zoom_1d(n: int, zoom: float) -> tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]:
    """scipy.ndimage.zoom(order=1) of the centre crop of length ceil(n / zoom), trimmed back to n.

    Returns per output position the two source indices and the weight of the second one.
    """
    crop = math.ceil(n / zoom)
    top = (n - crop) // 2
    out_len = round(crop * zoom)
    trim = (out_len - n) // 2
    step = (crop - 1) / (out_len - 1) if out_len > 1 else 0.0
    i0s, i1s, fs = [], [], []
    for r in range(n):
        pos = (r + trim) * step
        i0 = min(math.floor(pos), crop - 1)
        f = pos - i0
        i1 = min(i0 + 1, crop - 1)
        i0s.append(top + i0)
        i1s.append(top + i1)
        fs.append(f)
    return tuple(i0s), tuple(i1s), tuple(fs)


def clipped_zoom_matrix(h: int, w: int, zooms: tuple[float, ...], include_identity: bool) -> Tensor:
    """Sparse (H*W x H*W) operator: mean of the reference's clipped_zoom over ``zooms`` (and the
    image itself when ``include_identity``), each zoom separable bilinear as scipy's zoom(order=1)."""
    rows, cols, vals = [], [], []
    out_idx = torch.arange(h * w).reshape(h, w)
    for z in zooms:
        hi0, hi1, hf = (torch.tensor(v) for v in _zoom_1d(h, z))
        wi0, wi1, wf = (torch.tensor(v) for v in _zoom_1d(w, z))
        hf = hf.to(torch.float64)
        wf = wf.to(torch.float64)
        for ri, rw in ((hi0, 1 - hf), (hi1, hf)):
            for ci, cw in ((wi0, 1 - wf), (wi1, wf)):
                rows.append(out_idx.reshape(-1))
                cols.append((ri[:, None] * w + ci[None, :]).reshape(-1))
                vals.append((rw[:, None] * cw[None, :]).reshape(-1))
    if include_identity:
        rows.append(out_idx.reshape(-1))
        cols.append(out_idx.reshape(-1))
        vals.append(torch.ones(h * w, dtype=torch.float64))
    count = len(zooms) + (1 if include_identity else 0)
    m = torch.sparse_coo_tensor(
        torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals) / count, (h * w, h * w), check_invariants=True
    )
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the one kernel we use is stable
        warnings.simplefilter("ignore", UserWarning)
        return m.coalesce().to(torch.float32).to_sparse_csr()


def apply_spatial_operator(x: Tensor, m: Tensor) -> Tensor:
    """Apply a sparse (H*W x H*W) operator to every channel of every image."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).t()
    return torch.sparse.mm(m, flat).t().reshape(n, c, h, w)


def clipped_zoom(x: Tensor, zoom: float) -> Tensor:
    """The reference's clipped_zoom for one zoom factor (centre crop, scipy zoom order 1, trim)."""
    h, w = x.shape[-2:]
    hi0, hi1, hf = _zoom_1d(h, zoom)
    wi0, wi1, wf = _zoom_1d(w, zoom)
    dev = x.device
    hf_t = torch.tensor(hf, dtype=x.dtype, device=dev)[:, None]
    wf_t = torch.tensor(wf, dtype=x.dtype, device=dev)
    a = x.index_select(-2, torch.tensor(hi0, device=dev))
    b = x.index_select(-2, torch.tensor(hi1, device=dev))
    y = a + (b - a) * hf_t
    a = y.index_select(-1, torch.tensor(wi0, device=dev))
    b = y.index_select(-1, torch.tensor(wi1, device=dev))
    return a + (b - a) * wf_t
