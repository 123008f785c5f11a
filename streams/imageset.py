"""The in-memory image set every source returns (spec S1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ImageSet"]


@dataclass(frozen=True)
class ImageSet:
    """Images as stored on disk (uint8, N x C x H x W), their int64 labels and the class names.

    ``precorrupted`` marks one domain of a precomputed corruption set, ``(set name, corruption,
    severity)`` (set by :func:`streams.cifar_c` and :func:`streams.imagenet_c`); None for clean images.
    A :class:`streams.Stream` refuses a marked set rather than corrupt it a second time.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    precorrupted: tuple[str, str, int] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"ImageSet.images must be a uint8 tensor N x C x H x W, got {self.images.dtype} "
                f"with shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"ImageSet.labels must be an int64 tensor of length {self.images.shape[0]}, got "
                f"{self.labels.dtype} with shape {tuple(self.labels.shape)}"
            )
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise ValueError(f"ImageSet.labels must lie in 0..{len(self.classes) - 1} (one per class name)")
        marker = self.precorrupted
        if marker is not None and not (
            isinstance(marker, tuple) and len(marker) == 3 and isinstance(marker[0], str)
            and isinstance(marker[1], str) and isinstance(marker[2], int) and not isinstance(marker[2], bool)
        ):  # fmt: skip
            raise ValueError(
                f"ImageSet.precorrupted must be None or (set name, corruption, severity), got {marker!r}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def head(self, n: int | None) -> ImageSet:
        """The first ``n`` images (all for None), as robustbench's loaders take them."""
        if n is None or n == len(self):
            return self
        if not 1 <= n <= len(self):
            raise ValueError(f"n_examples={n} is out of range: the source holds {len(self)} images")
        return ImageSet(self.images[:n], self.labels[:n], self.classes, self.precorrupted)
