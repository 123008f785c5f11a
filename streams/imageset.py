"""The in-memory image set every source returns."""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ImageSet"]


@dataclass(frozen=True)
class ImageSet:
    """Images as stored on disk (uint8, N x C x H x W), their int64 labels and the class names: what every
    source gives a stream. Build one from your own tensors with :meth:`from_tensors` (see :doc:`/streams`).

    Args:
        images: uint8, N x C x H x W.
        labels: int64, N class indices in ``0 .. len(classes) - 1``.
        classes: the class names, in label order.
        precorrupted: ``(set name, corruption, severity)`` for one domain of a precomputed corruption set (set
            by :func:`tta_streams.cifar_c` and :func:`tta_streams.imagenet_c`); None for clean images. A
            :class:`tta_streams.Stream` refuses a marked set rather than corrupt it a second time.
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
            raise ValueError(f"ImageSet.precorrupted must be None or (set name, corruption, severity), got {marker!r}")

    @classmethod
    def from_tensors(cls, images: Any, labels: Any, classes: Sequence[str] | None = None) -> ImageSet:
        """A set from a user's images and labels (tensors or arrays).

        Args:
            images: N x C x H x W (or N x H x W, one channel), uint8 in 0..255 or floating point in [0, 1]
                (rounded to uint8, as images are stored).
            labels: N integer class indices.
            classes: the class names (default ``"0"``, ``"1"``, ... up to the largest label).
        """
        images = torch.as_tensor(images).cpu()
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if images.is_floating_point():
            if len(images) and (float(images.min()) < 0.0 or float(images.max()) > 1.0):
                raise ValueError("floating-point images must lie in [0, 1]; pass uint8 images for 0..255")
            images = (images * 255.0).round().to(torch.uint8)
        labels = torch.as_tensor(labels).cpu()
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        labels = labels.to(torch.int64)
        if classes is None:
            classes = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
        return cls(images.contiguous(), labels.contiguous(), list(classes))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ImageSet:
        """A set saved by :meth:`save` (or any ``torch.save({"images": ..., "labels": ..., "classes": ...})``,
        ``classes`` optional), read with ``weights_only=True``: no code in the file runs."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise ValueError(f"{path}: not a set of images saved with torch.save ({error})") from None
        if not isinstance(data, dict) or not {"images", "labels"} <= set(data):
            raise ValueError(
                f"{path}: expected a dict with 'images' and 'labels' (and optionally 'classes'), saved with torch.save"
            )
        return cls.from_tensors(data["images"], data["labels"], data.get("classes"))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the images, labels and class names with ``torch.save`` (read back by :meth:`load`)."""
        torch.save({"images": self.images, "labels": self.labels, "classes": list(self.classes)}, path)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def head(self, n: int | None) -> ImageSet:
        """The first ``n`` images (all for None), as robustbench's loaders take them."""
        if n is None or n == len(self):
            return self
        if not 1 <= n <= len(self):
            raise ValueError(f"n_examples={n} is out of range: the source holds {len(self)} images")
        return ImageSet(self.images[:n], self.labels[:n], self.classes, self.precorrupted)
