"""Ours vs corrupt-tta with the ImageNet table (docs/corruptions.md): one figure per corruption and severity.

Run ``python -m studies.corruption_reference`` (needs the ``dev`` extra, which installs corrupt-tta).
Same smooth 64x64 RGB test images for both. Deterministic corruptions: the largest pixel difference and
the share of differing pixels. Random ones: the mean absolute perturbation ``|corrupted - clean|`` of
each implementation, and their ratio (1.0 = same strength). The tests in
``tests/streams/test_corrupt_reference.py`` assert the tolerances; this prints the measured values.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tabulate import tabulate

from tta_streams.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, corrupt
from tta_streams.parsing import parse_severity_list

DETERMINISTIC = {
    "defocus_blur",
    "zoom_blur",
    "gaussian_blur",
    "brightness",
    "contrast",
    "pixelate",
    "jpeg_compression",
    "saturate",
}


def sample_images(
    n: int = 16, size: int = 64, seed: int = 0, *, channels: int = 3, noise: float = 0.03
) -> torch.Tensor:
    """Smooth random images with a bright patch and mild noise, uint8 N x C x size x size: a stand-in
    for natural images (``noise=0`` draws no noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, 6, 6, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x[..., size // 4 : size // 2, size // 3 : 2 * size // 3] += 0.3
    if noise:
        x = x + noise * torch.randn(x.shape, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def reference_corrupt(name: str, images: torch.Tensor, severity: int) -> np.ndarray:
    """corrupt-tta image by image, then numpy's uint8 cast as the original scripts save; N x C x H x W."""
    from corrupt_tta import corruptions as reference

    np.random.seed(severity)
    out = [np.uint8(getattr(reference, name)(im.permute(1, 2, 0).numpy().copy(), severity)) for im in images]
    return np.stack(out).transpose(0, 3, 1, 2).astype(np.float64)


def compare(name: str, images: torch.Tensor, severity: int) -> list[str]:
    """One table row: the figures that fit ``name`` (see the module docstring)."""
    clean = images.numpy().astype(np.float64)
    ours = corrupt(images, name, severity, seed=severity, table="imagenet").numpy().astype(np.float64)
    ref = reference_corrupt(name, images, severity)
    if name in DETERMINISTIC:
        diff = np.abs(ours - ref)
        return [name, str(severity), "pixels", f"max |diff| {diff.max():.0f}", f"{100 * (diff > 0).mean():.1f}% differ"]
    mae_ours, mae_ref = np.abs(ours - clean).mean(), np.abs(ref - clean).mean()
    return [
        name,
        str(severity),
        "mean |perturbation|",
        f"{mae_ours:.2f} vs {mae_ref:.2f}",
        f"ratio {mae_ours / mae_ref:.2f}",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--severities", default="1,3,5")
    parser.add_argument("--n", type=int, default=16, help="test images")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    images = sample_images(args.n)
    rows = [
        compare(name, images, s)
        for name in CORRUPTIONS + EXTRA_CORRUPTIONS
        for s in parse_severity_list(args.severities)
    ]
    print(tabulate(rows, headers=["corruption", "sev", "statistic", "ours vs corrupt-tta", ""], tablefmt="github"))


if __name__ == "__main__":
    main()
