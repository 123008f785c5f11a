"""Digital corruptions: brightness, contrast, elastic transform, pixelate, JPEG, saturate.

Inputs float32 in [0, 1]; outputs float32 on the 0..255 scale. Saturate is colour-only (the dispatcher
replicates grayscale to RGB and back); the others handle grayscale natively.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch
from torch import Tensor

from tta_streams._extras import require
from tta_streams.corruptions import _ops
from tta_streams.corruptions._rng import ImageRNG


def brightness(x: Tensor, rng: ImageRNG, shift: float) -> Tensor:
    """HSV value + shift (clipped), hue and saturation kept.

    Closed form of the RGB->HSV->RGB round trip: with V = max channel, every channel scales by
    V'/V, V' = min(V + shift, 1); black pixels become gray V'. On grayscale V is the pixel itself.
    """
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + shift).clamp_(max=1.0)
    out = torch.where(v > 0, x * (v_new / v.clamp_min(1e-12)), v_new.expand_as(x))
    return out.clamp_(0, 1) * 255


def saturate(x: Tensor, rng: ImageRNG, factor: float, offset: float) -> Tensor:
    """HSV saturation * factor + offset (clipped), hue and value kept; x is RGB.

    Closed form: channel = V - (V - channel) * S'/S; gray pixels (S = 0, hue 0 by convention) become
    (V, V(1-S'), V(1-S')), as the reference's conversion gives.
    """
    v = x.amax(dim=1, keepdim=True)
    mn = x.amin(dim=1, keepdim=True)
    s = torch.where(v > 0, (v - mn) / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (s * factor + offset).clamp_(0, 1)
    coloured = v - (v - x) * (s_new / s.clamp_min(1e-12))
    gray = torch.cat([v, v * (1 - s_new), v * (1 - s_new)], dim=1)
    out = torch.where(s > 0, coloured, gray)
    return out.clamp_(0, 1) * 255


def contrast(x: Tensor, rng: ImageRNG, factor: float) -> Tensor:
    """(x - mean) * factor + mean, with the per-image, per-channel spatial mean."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp_(0, 1) * 255


# ------------------------------------------------------------------------------------------ pixelate
_PRECISION_BITS = 22  # Pillow's fixed-point resampling precision for 8-bit images


@lru_cache(maxsize=64)
def pil_box_weights(in_size: int, out_size: int) -> Tensor:
    """Pillow's BOX resampling coefficients (out x in), quantized to its 22-bit fixed point."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        row = []
        for xi in range(xmin, xmax):
            t = (xi - center + 0.5) / filterscale
            row.append(1.0 if -0.5 < t <= 0.5 else 0.0)
        total = sum(row)
        for j, wv in enumerate(row):
            k = wv / total if total else 0.0
            weights[xx, xmin + j] = int(k * (1 << _PRECISION_BITS) + 0.5)
    return weights


def _pil_resize_box(x: Tensor, out_h: int, out_w: int) -> Tensor:
    """Pillow's Image.resize(BOX) on 8-bit values (float64 N x C x H x W): horizontal pass, then
    vertical, each rounded and clipped to 8 bits exactly as Pillow's fixed-point code."""
    half = float(1 << (_PRECISION_BITS - 1))
    unit = float(1 << _PRECISION_BITS)
    h, w = x.shape[-2:]
    if out_w != w:
        kw = pil_box_weights(w, out_w).to(x.device)
        x = torch.floor((x @ kw.t() + half) / unit).clamp_(0, 255)
    if out_h != h:
        kh = pil_box_weights(h, out_h).to(x.device)
        x = torch.floor((kh @ x + half) / unit).clamp_(0, 255)
    return x


def pixelate(x: Tensor, rng: ImageRNG, factor: float) -> Tensor:
    """Box-downscale to int(side * factor), box-upscale back (Pillow's BOX filter, bit-exact)."""
    h, w = x.shape[-2:]
    img = torch.round(x.to(torch.float64) * 255)
    small = _pil_resize_box(img, int(h * factor), int(w * factor))
    return _pil_resize_box(small, h, w).to(torch.float32)


def jpeg_compression(x: Tensor, rng: ImageRNG, quality: int) -> Tensor:
    """JPEG round trip at ``quality`` through libjpeg (torchvision.io), one library call per image on
    the CPU (grayscale encoded as grayscale); bit-identical to the reference's Pillow round trip."""
    with warnings.catch_warnings():  # torchvision 0.29 announces a move of its codecs to torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        io = require("torchvision.io", "the jpeg_compression corruption")

        img = torch.round(x * 255).to(torch.uint8).cpu()
        encoded = io.encode_jpeg(list(img), quality=int(quality))
        decoded = io.decode_jpeg(encoded)
    return torch.stack(decoded).to(x.device).to(torch.float32)


# ----------------------------------------------------------------------------------------- elastic
def _smoothing_matrix(n: int, sigma: float, truncate: float) -> Tensor:
    """scipy.ndimage.gaussian_filter1d(mode="reflect") along an axis of length n, as an n x n matrix
    (border folding included), so that smoothing a field is two small matrix products."""
    if sigma <= 1e-15:
        return torch.eye(n, dtype=torch.float64)
    return _ops.filter_matrix(n, tuple(_ops.gaussian_kernel1d(sigma, truncate).tolist()), "symmetric")


def _affine_inverse(src: Tensor, dst: Tensor) -> Tensor:
    """Per image, the 2 x 3 map taking output (x, y) back to input coordinates for the affine transform
    sending the 3 points ``src`` to ``dst`` (N x 3 x 2 each); cv2.getAffineTransform + warpAffine."""
    ones = torch.ones(*src.shape[:-1], 1, dtype=src.dtype, device=src.device)
    a = torch.cat([dst, ones], dim=-1)  # N x 3 x 3: rows (x', y', 1)
    return torch.linalg.solve(a, src).transpose(1, 2)  # N x 2 x 3: (x, y) = M_inv @ (x', y', 1)


def elastic_transform(x: Tensor, rng: ImageRNG, alpha: float, sigma: float, jitter: float) -> Tensor:
    """Random affine warp (3 jittered points, reflect-101 border), then a smooth random displacement
    field (uniform noise smoothed with sigma, truncate 3, scaled by alpha), bilinear with symmetric
    border. Keeps the reference's quirk of passing (row, col) centre points as (x, y)."""
    n, _, h, w = x.shape
    dev = x.device
    centre = torch.tensor([h // 2, w // 2], dtype=torch.float64)
    size = min(h, w) // 3
    pts1 = torch.stack([centre + size, torch.stack([centre[0] + size, centre[1] - size]), centre - size])
    pts1 = pts1.to(dev)
    pts2 = pts1[None] + rng.uniform("affine", (3, 2), -jitter, jitter).to(torch.float64)
    inv = _affine_inverse(pts1[None].expand(n, -1, -1), pts2)
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float64, device=dev),
        torch.arange(w, dtype=torch.float64, device=dev),
        indexing="ij",
    )
    src_x = inv[:, 0, 0, None, None] * xx + inv[:, 0, 1, None, None] * yy + inv[:, 0, 2, None, None]
    src_y = inv[:, 1, 0, None, None] * xx + inv[:, 1, 1, None, None] * yy + inv[:, 1, 2, None, None]
    warped = _ops.bilinear_sample(x, src_y.float(), src_x.float(), "reflect101")

    smooth_h = _smoothing_matrix(h, float(sigma), 3.0).to(dev, torch.float32)
    smooth_w = _smoothing_matrix(w, float(sigma), 3.0).to(dev, torch.float32)
    noise = rng.uniform("displacement", (2, h, w), -1.0, 1.0)
    fields = smooth_h @ noise @ smooth_w.t() * alpha
    ys = yy.float()[None] + fields[:, 1]
    xs = xx.float()[None] + fields[:, 0]
    out = _ops.bilinear_sample(warped, ys, xs, "symmetric")
    return out.clamp_(0, 1) * 255
