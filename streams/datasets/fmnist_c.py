"""Fashion-MNIST-C: the embedded Fashion-MNIST test split, corrupted on the fly."""

from __future__ import annotations

from pathlib import Path

from tta_streams.datasets.catalogue import DatasetInfo, register_dataset
from tta_streams.fmnist import CLASSES, fashion_mnist
from tta_streams.imageset import ImageSet


def _load(data_dir: Path | None) -> ImageSet:
    return fashion_mnist("test")


INFO = register_dataset(
    DatasetInfo(
        name="fmnist-c",
        aliases=("fmnist", "fashion-mnist", "fashion-mnist-c"),
        base="fmnist",
        input_shape=(1, 28, 28),
        num_classes=10,
        classes=tuple(CLASSES),
        load=_load,
        table="cifar",
    )
)
