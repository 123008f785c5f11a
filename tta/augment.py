"""DUA's single-image protocol: update statistics from augmented copies, predict the original (spec M5)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tta.policies.base import NormPolicy

CROP_PADDING = 4


def augment_copies(x: Tensor, copies: int, generator: torch.Generator) -> Tensor:
    """``copies`` random augmentations of each image of ``x`` (N, C, H, W), grouped by image.

    Each copy gets a random crop of the zero-padded image (padding 4, as CIFAR's RandomCrop), a random
    horizontal flip, and, for square images, a rotation by a random multiple of 90 degrees. The
    parameters are drawn from ``generator`` on the CPU and applied in a batch.
    """
    n, _, h, w = x.shape
    batch = x.repeat_interleave(copies, dim=0)
    total = batch.shape[0]
    offsets = torch.randint(0, 2 * CROP_PADDING + 1, (2, total), generator=generator).to(x.device)
    flips = (torch.rand(total, generator=generator) < 0.5).to(x.device)
    turns = torch.randint(0, 4 if h == w else 1, (total,), generator=generator).to(x.device)
    padded = F.pad(batch, [CROP_PADDING] * 4)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (total, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (total, W)
    sample = torch.arange(total, device=x.device)[:, None, None]
    out = padded[sample, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    for k in range(1, 4):
        chosen = turns == k
        if chosen.any():
            out[chosen] = torch.rot90(out[chosen], k, dims=(-2, -1))
    return out


class AugmentedUpdate(nn.Module):
    """Wraps a model adapted with ``momentum_decay``: each call first updates the statistics with
    ``copies`` augmentations of every input image, then predicts the original images with the
    updated statistics and no further update (Mirza et al. 2022, DUA; spec M5).

    Augmentations are drawn from a generator seeded by the number of calls so far (the ``calls``
    buffer), so a stream is reproducible and ``reset`` restarts the same draws. Inputs must be image
    batches ``(N, C, H, W)``. The layers know whether they are called through this wrapper: calling
    the inner model directly (ignoring what ``tta.adapt`` returned) warns that no augmentation runs.
    """

    def __init__(self, model: nn.Module, copies: int) -> None:
        super().__init__()
        if copies < 1:
            raise ValueError(f"augment must be >= 1 copies, got {copies}")
        self.model = model
        self.copies = copies
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"momentum_decay augment={self.copies} (DUA) augments image batches (N, C, H, W); "
                f"got input of shape {tuple(x.shape)}"
            )
        layers = [m for m in self.model.modules() if isinstance(m, NormPolicy)]
        with _flagged(layers, "in_augmented_update", True):
            if any(not layer.paused for layer in layers):
                generator = torch.Generator().manual_seed(int(self.calls))
                self.model(augment_copies(x, self.copies, generator))
                self.calls += 1
            with _flagged(layers, "paused", True):
                return self.model(x)

    def reset(self) -> None:
        self.calls.zero_()


@contextlib.contextmanager
def _flagged(layers: list[NormPolicy], flag: str, value: bool) -> Iterator[None]:
    """Set a boolean attribute on every layer inside, restoring each one's own value on exit."""
    before = [getattr(layer, flag) for layer in layers]
    for layer in layers:
        setattr(layer, flag, value)
    try:
        yield
    finally:
        for layer, old in zip(layers, before):
            setattr(layer, flag, old)
