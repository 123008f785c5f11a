"""Fashion-MNIST-C: the embedded Fashion-MNIST test split, corrupted on the fly (spec S1)."""

from __future__ import annotations

from pathlib import Path

from streams.datasets.catalogue import DatasetInfo, register_dataset
from streams.fmnist import CLASSES, fashion_mnist
from streams.imageset import ImageSet


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
