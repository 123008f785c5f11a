"""Weather corruptions: snow, frost, fog, and spatter (held out).

Inputs float32 in [0, 1]; outputs float32 on the 0..255 scale. Frost and spatter add colour, so the
dispatcher hands them grayscale images replicated to RGB and reduces the result back to luma.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from tta_streams._extras import require
from tta_streams.corruptions import _ops
from tta_streams.corruptions._rng import ImageRNG

# ----------------------------------------------------------------------------------------------- fog
PLASMA_CHUNK_ELEMENTS = 1 << 21  # map entries per pass of the diamond-square algorithm (8 MB)


def plasma_fractal(rng: ImageRNG, size: int, wibble_decay: float, device: torch.device) -> Tensor:
    """The reference's diamond-square height map, one per image, in [0, 1]; N x size x size.

    Built as a pyramid: the grid of each level is the previous level's grid with the new square
    centres and edge midpoints interleaved in, which are exactly the strided entries the reference
    writes into its full-size map, so every value and the order of its sums are the reference's. Each
    level works on contiguous arrays (no strided writes into the full map).
    """
    if size & (size - 1):
        raise ValueError(f"plasma fractal size must be a power of two, got {size}")
    chunk = max(1, PLASMA_CHUNK_ELEMENTS // (size * size))
    if rng.n > chunk:  # a few MB of maps at a time stay in cache: 1.5x faster at size 256
        return torch.cat([plasma_fractal(part, size, wibble_decay, device) for part in rng.chunks(chunk)])
    n = rng.n
    grid = torch.zeros(n, 1, 1, dtype=torch.float32, device=device)  # the corners at step = size
    wibble, level = 100.0, 0

    def wibbled_mean(total: Tensor, tag: str) -> Tensor:
        noise = rng.uniform(f"{tag}{level}", tuple(total.shape[1:]), -wibble, wibble)
        return total / 4 + wibble * noise

    while grid.shape[-1] < size:
        corners = grid
        squares = corners + torch.roll(corners, -1, dims=1)
        squares = squares + torch.roll(squares, -1, dims=2)
        centres = wibbled_mean(squares, "square")
        left = centres + torch.roll(centres, 1, dims=1) + corners + torch.roll(corners, -1, dims=2)
        left = wibbled_mean(left, "diamond_h")  # rows of the corners, columns of the centres
        top = centres + torch.roll(centres, 1, dims=2) + corners + torch.roll(corners, -1, dims=1)
        top = wibbled_mean(top, "diamond_v")  # rows of the centres, columns of the corners
        s = corners.shape[-1]
        even_rows = torch.stack((corners, left), dim=-1).reshape(n, s, 2 * s)
        odd_rows = torch.stack((top, centres), dim=-1).reshape(n, s, 2 * s)
        grid = torch.stack((even_rows, odd_rows), dim=2).reshape(n, 2 * s, 2 * s)
        wibble /= wibble_decay
        level += 1
    flat = grid.reshape(n, -1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    flat = flat / flat.max(dim=1, keepdim=True).values
    return flat.reshape(n, size, size)


def fog(x: Tensor, rng: ImageRNG, strength: float, wibble_decay: float) -> Tensor:
    """Add a plasma fractal and rescale by the image's maximum, as the reference does.

    The map's side is the smallest power of two covering the image, whatever the table: the reference
    scripts use 32 for CIFAR's 32 px, 64 for Tiny ImageNet's 64 px and 256 for ImageNet's 224 px
    crops, and corrupt-tta generalizes them the same way.
    """
    h, w = x.shape[-2:]
    size = 1 << max(0, math.ceil(math.log2(max(h, w))))
    fractal = plasma_fractal(rng, size, float(wibble_decay), x.device)[:, None, :h, :w]
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    out = (x + strength * fractal) * max_val / (max_val + strength)
    return out.clamp_(0, 1) * 255


# --------------------------------------------------------------------------------------------- frost
FROST_TEXTURES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")  # randint(5)


def frost_texture_files() -> list:
    """The frost texture files of the corrupt-tta package; ImportError naming it when it is missing."""
    from importlib import resources

    require("corrupt_tta", "the frost corruption (its texture images)")
    folder = resources.files("corrupt_tta.assets.frost")
    return [folder.joinpath(name) for name in FROST_TEXTURES]


@lru_cache(maxsize=16)
def frost_textures(scale: float, min_h: int, min_w: int) -> tuple[Tensor, ...]:
    """The reference's frost textures as float32 3 x H x W (0..255) RGB tensors.

    Resized by ``scale`` as cv2.resize(INTER_LINEAR) does (the CIFAR script uses 0.2), and enlarged
    further, keeping the aspect ratio, if still not larger than ``min_h`` x ``min_w`` (images bigger than
    the reference's).
    """
    image = require("PIL.Image", "the frost corruption")

    out = []
    for path in frost_texture_files():
        with image.open(path) as im:
            rgb = torch.from_numpy(_pil_to_array(im.convert("RGB"))).permute(2, 0, 1).float()
        fh, fw = rgb.shape[-2:]
        eff = scale
        if round(fh * eff) <= min_h or round(fw * eff) <= min_w:
            eff = max((min_h + 1) / fh, (min_w + 1) / fw)
        if eff != 1.0:
            rgb = _cv2_linear_resize(rgb, round(fh * eff), round(fw * eff), eff)
        out.append(rgb.contiguous())
    return tuple(out)


def _pil_to_array(im):
    import numpy as np

    return np.asarray(im, dtype=np.uint8).copy()


def _cv2_linear_resize(img: Tensor, out_h: int, out_w: int, scale: float) -> Tensor:
    """cv2.resize(..., fx=fy=scale, INTER_LINEAR) on a 3 x H x W uint8-valued image: half-pixel
    centres, no antialiasing, edges replicated, rounded to 8 bits."""
    ys = (torch.arange(out_h, dtype=torch.float64) + 0.5) / scale - 0.5
    xs = (torch.arange(out_w, dtype=torch.float64) + 0.5) / scale - 0.5
    ys = ys.clamp(0, img.shape[-2] - 1).float()
    xs = xs.clamp(0, img.shape[-1] - 1).float()
    grid_y = ys[:, None].expand(out_h, out_w)[None]
    grid_x = xs[None, :].expand(out_h, out_w)[None]
    return torch.round(_ops.bilinear_sample(img[None], grid_y, grid_x, "replicate")[0])


def frost(x: Tensor, rng: ImageRNG, image_weight: float, frost_weight: float, *, texture_scale: float) -> Tensor:
    """Blend with a random crop of one of five frost textures (chosen uniformly per image), resized by
    ``texture_scale`` first."""
    n, _, h, w = x.shape
    textures = frost_textures(texture_scale, h, w)
    choice = rng.integers("texture", (), 0, len(textures)).cpu()
    u_row = rng.uniform("row", ()).cpu()
    u_col = rng.uniform("col", ()).cpu()
    layer = torch.empty(n, 3, h, w, dtype=torch.float32)
    for t, tex in enumerate(textures):
        sel = torch.nonzero(choice == t).flatten()
        if sel.numel() == 0:
            continue
        fh, fw = tex.shape[-2:]
        # numpy randint(0, fh - h): start uniform in [0, fh - h)
        r0 = torch.floor(u_row[sel] * (fh - h)).long()
        c0 = torch.floor(u_col[sel] * (fw - w)).long()
        rows = (r0[:, None] + torch.arange(h))[:, :, None]
        cols = (c0[:, None] + torch.arange(w))[:, None, :]
        layer[sel] = tex[:, rows, cols].permute(1, 0, 2, 3)
    out = image_weight * x * 255 + frost_weight * layer.to(x.device)
    return out.clamp_(0, 255)


# ---------------------------------------------------------------------------------------------- snow
def snow(
    x: Tensor,
    rng: ImageRNG,
    loc: float,
    scale: float,
    zoom: float,
    threshold: float,
    radius: float,
    sigma: float,
    blend: float,
) -> Tensor:
    """Zoomed, thresholded Gaussian flakes streaked by ImageMagick's motion blur (angle in
    [-135, -45)), added twice (the layer and its 180-degree rotation) to a whitened image."""
    h, w = x.shape[-2:]
    layer = rng.normal("flakes", (1, h, w), loc=loc, scale=scale)
    layer = _ops.clipped_zoom(layer, float(zoom))
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer = torch.floor(layer.clamp(0, 1) * 255) / 255  # the reference's 8-bit PNG hand-over
    angle = rng.uniform("angle", (), -135.0, -45.0)
    layer = _ops.motion_blur(layer, float(radius), float(sigma), angle)
    layer = torch.round(layer.clamp(0, 1) * 255) / 255
    gray = _ops.luma(x)
    x = blend * x + (1 - blend) * torch.maximum(x, gray * 1.5 + 0.5)
    out = x + layer + torch.flip(layer, dims=(-2, -1))
    return out.clamp_(0, 1) * 255


# ------------------------------------------------------------------------------------------- spatter
def _box3(x: Tensor) -> Tensor:
    """cv2.blur with a 3x3 box, BORDER_REFLECT_101."""
    k = torch.full((3,), 1.0 / 3, dtype=torch.float64)
    return _ops.separable_filter(x, k, k, "reflect101")


def _canny(img: Tensor, low: float, high: float) -> Tensor:
    """cv2.Canny(img, low, high) on 8-bit values (N x 1 x H x W): Sobel 3x3 with replicated edges,
    L1 magnitude, non-maximum suppression in four directions, hysteresis (8-connected)."""
    p = _ops.pad(img, 1, 1, 1, 1, "replicate")
    sob = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=img.dtype, device=img.device)
    gx = F.conv2d(p, sob.view(1, 1, 3, 3))
    gy = F.conv2d(p, sob.t().contiguous().view(1, 1, 3, 3))
    mag = gx.abs() + gy.abs()
    mp = F.pad(mag, (1, 1, 1, 1))  # zero magnitude outside, as cv2's buffers

    def nb(dy: int, dx: int) -> Tensor:
        h, w = mag.shape[-2:]
        return mp[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    ax, ay = gx.abs(), gy.abs()
    tg22, tg67 = math.tan(math.radians(22.5)), math.tan(math.radians(67.5))
    horizontal = ay < ax * tg22
    vertical = ay > ax * tg67
    same_sign = (gx * gy) >= 0
    keep_h = (mag > nb(0, -1)) & (mag >= nb(0, 1))
    keep_v = (mag > nb(-1, 0)) & (mag >= nb(1, 0))
    keep_d = torch.where(same_sign, (mag > nb(-1, -1)) & (mag > nb(1, 1)), (mag > nb(-1, 1)) & (mag > nb(1, -1)))
    keep = torch.where(horizontal, keep_h, torch.where(vertical, keep_v, keep_d)) & (mag > low)
    edges = keep & (mag > high)
    weak = keep
    for _ in range(img.shape[-1] * img.shape[-2]):
        grown = (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0) & weak
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges


def _distance_to_edges(edges: Tensor, cap: int) -> Tensor:
    """Euclidean distance of every pixel to the nearest edge pixel, capped at ``cap`` (exact, by two
    separable min passes over a window of +-cap)."""
    inf = float(cap * cap * 4 + 1)
    h, w = edges.shape[-2:]
    ep = F.pad(edges.float(), (cap, cap, 0, 0))
    g = torch.full(edges.shape, inf, dtype=torch.float32, device=edges.device)
    for k in range(-cap, cap + 1):
        hit = ep[..., cap + k : cap + k + w] > 0
        g = torch.where(hit, torch.minimum(g, torch.full_like(g, float(k * k))), g)
    gp = F.pad(g, (0, 0, cap, cap), value=inf)
    d2 = torch.full(edges.shape, inf, dtype=torch.float32, device=edges.device)
    for k in range(-cap, cap + 1):
        d2 = torch.minimum(d2, gp[..., cap + k : cap + k + h, :] + k * k)
    return torch.sqrt(d2).clamp_(max=float(cap))


def _equalize_hist(img: Tensor) -> Tensor:
    """cv2.equalizeHist per image on integer values 0..255 (N x 1 x H x W)."""
    n = img.shape[0]
    v = img.reshape(n, -1).long()
    hist = torch.zeros(n, 256, dtype=torch.float64, device=img.device)
    hist.scatter_add_(1, v, torch.ones_like(v, dtype=torch.float64))
    total = float(v.shape[1])
    first = torch.argmax((hist > 0).to(torch.int8), dim=1, keepdim=True)
    first_count = hist.gather(1, first)
    cdf = torch.cumsum(hist, dim=1)
    denom = (total - first_count).clamp_min(1)
    lut = torch.round((cdf - first_count) * 255.0 / denom).clamp_(0, 255)
    levels = torch.arange(256, device=img.device)[None, :]
    lut = torch.where(levels < first, torch.zeros_like(lut), lut)
    lut = torch.where(first_count >= total, first.to(lut.dtype).expand_as(lut), lut)
    return lut.gather(1, v).reshape(img.shape).to(img.dtype)


_WATER = (175 / 255, 238 / 255, 238 / 255)  # the reference's "pale turquoise", in image channel order
_MUD = (63 / 255, 42 / 255, 20 / 255)


def spatter(
    x: Tensor, rng: ImageRNG, loc: float, scale: float, sigma: float, threshold: float, intensity: float, mode: int
) -> Tensor:
    """Water drops (mode 0: edges of a thresholded smooth noise layer, distance-transformed, equalized
    and embossed) or mud (mode 1: a blurred binary mask of the layer), after the reference.

    Departures, all in mode 0 helpers: the distance is exact Euclidean (cv2 uses its 5x5 mask
    approximation) and values of the layer above 1 saturate at 255 instead of wrapping modulo 256.
    """
    h, w = x.shape[-2:]
    liquid = rng.normal("liquid", (1, h, w), loc=loc, scale=scale)
    liquid = _ops.gaussian_filter(liquid, float(sigma))
    liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
    if mode == 0:
        l8 = torch.floor(liquid.clamp(0, 1) * 255)
        edges = _canny(l8, 50, 150)
        dist = _distance_to_edges(edges, 20)
        dist = torch.floor(_box3(dist).clamp_(0, 255))
        dist = _equalize_hist(dist)
        emboss = torch.tensor([[-2.0, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = torch.round(_ops.filter2d(dist, emboss)).clamp_(0, 255)
        dist = torch.round(_box3(dist))
        m = liquid * dist
        peak = m.amax(dim=(1, 2, 3), keepdim=True)
        m = torch.where(peak > 0, m / peak.clamp_min(1e-12), torch.zeros_like(m)) * intensity
        colour = torch.tensor(_WATER, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        out = x + m * colour
    else:
        mask = (liquid > threshold).to(x.dtype)
        mask = _ops.gaussian_filter(mask, float(intensity))
        mask = torch.where(mask < 0.8, torch.zeros_like(mask), mask)
        colour = torch.tensor(_MUD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        out = x * (1 - mask) + colour * mask
    return out.clamp_(0, 1) * 255
