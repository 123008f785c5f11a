"""On-the-fly image corruptions of Hendrycks & Dietterich, batched in torch (see :doc:`/corruptions`).

``corrupt(images, name, severity, seed=...)`` corrupts a uint8 N x C x H x W batch (C = 1 or 3) on its own
device. Per-image randomness is counter-based (see ``_rng``): image ``i`` of a call is keyed by
(seed, corruption, severity, index_offset + i), so a stream gets the same bytes whatever the batching.
Each corruption (its function, parameter tables and grayscale handling) is one record of
:mod:`tta_streams.corruptions.catalogue`.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from tta_streams._seeds import check_seed
from tta_streams.corruptions._ops import luma, to_rgb
from tta_streams.corruptions._rng import ImageRNG
from tta_streams.corruptions.catalogue import (
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    TABLE_NAMES,
    TABLES,
    Corruption,
    check_severity,
    get_corruption,
    is_int,
    list_corruptions,
    register_corruption,
)

__all__ = [
    "CORRUPTIONS", "EXTRA_CORRUPTIONS", "SMALL_IMAGE_MAX_SIDE", "TABLES", "TABLE_NAMES", "Corruption", "check_severity",
    "corrupt", "default_table", "get_corruption", "is_int", "list_corruptions", "register_corruption",
]  # fmt: skip

log = logging.getLogger(__name__)

SMALL_IMAGE_MAX_SIDE = 64  # images with both sides <= this use the CIFAR table by default


def default_table(height: int, width: int) -> str:
    """The parameter table for an image size: "cifar" when both sides are at most
    ``SMALL_IMAGE_MAX_SIDE`` pixels, else "imagenet"."""
    return "cifar" if max(height, width) <= SMALL_IMAGE_MAX_SIDE else "imagenet"


def _validate(images: Tensor, corruption: str, severity: int, table: str | None) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    get_corruption(corruption)
    check_severity(severity)
    if images.dtype != torch.uint8:
        raise TypeError(
            f"images must be uint8 (0..255), got {images.dtype}; convert with (x * 255).round().to(torch.uint8)"
        )
    if images.dim() != 4:
        raise ValueError(f"images must be N x C x H x W (rank 4), got shape {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must have 1 or 3 channels, got C = {images.shape[1]} "
            f"(shape {tuple(images.shape)}; channels-last input needs .permute(0, 3, 1, 2))"
        )
    if images.shape[2] < 2 or images.shape[3] < 2:
        raise ValueError(f"images must be at least 2 x 2 pixels, got {tuple(images.shape[2:])}")
    if table is not None and table not in TABLE_NAMES:
        raise ValueError(f"unknown table {table!r}; valid: {', '.join(TABLE_NAMES)} or None (by size)")


def corrupt(
    images: Tensor, corruption: str, severity: int, *, seed: int, table: str | None = None, index_offset: int = 0
) -> Tensor:
    """Corrupt a uint8 N x C x H x W batch (C = 1 or 3) at severity 1..5, on the batch's device.

    Image ``i`` is corrupted with randomness keyed by (seed, corruption, severity, index_offset + i),
    independent of batch size and composition. Grayscale is corrupted as such; the colour-only corruptions
    (frost, spatter, saturate) run on the image replicated to RGB and return its ITU-R 601 luma.

    Args:
        images: uint8 N x C x H x W, C = 1 or 3, at least 2 x 2 pixels.
        corruption: a name of :data:`CORRUPTIONS` or :data:`EXTRA_CORRUPTIONS`.
        severity: an integer in 1..5.
        seed: an integer in 0..2**64-1 (a float is a TypeError, never rounded).
        table: ``"cifar"`` or ``"imagenet"``, the reference script whose parameters apply (None: by
            image size, see :func:`default_table`).
        index_offset: the index of the first image in its set, so that a set corrupted in pieces gets
            the bytes of one call.

    Returns:
        uint8 of the same shape, on the same device.

    Example:
        >>> foggy = corrupt(images, "fog", 5, seed=0)

    See :doc:`/corruptions` for the corruptions and their severity tables.
    """
    _validate(images, corruption, severity, table)
    seed, severity = check_seed(seed), int(severity)
    if not is_int(index_offset) or index_offset < 0:
        raise TypeError(f"index_offset must be an integer >= 0, got {index_offset!r}")
    n, c, h, w = images.shape
    table = table or default_table(h, w)
    entry = get_corruption(corruption)
    if entry.assets is not None:
        entry.assets()  # an empty batch too: a stream checks what it will need this way
    if n == 0:
        return images.clone()
    indices = torch.arange(index_offset, index_offset + n, device=images.device)
    rng = ImageRNG(seed, corruption, severity, indices)
    x = images.to(torch.float32) / 255.0
    if entry.colour_only:
        x = to_rgb(x)
    out = entry.fn(x, rng, *entry.params(table, severity), **entry.table_kwargs.get(table, {}))
    if entry.colour_only and c == 1:
        out = luma(out)
    # the reference converts its 0..255 floats with numpy's uint8 cast, which truncates; the small
    # margin keeps values that are whole numbers in exact arithmetic from dropping one level
    return torch.floor(out + 1e-3).clamp_(0, 255).to(torch.uint8)
