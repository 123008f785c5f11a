"""CIFAR-10-C (Hendrycks & Dietterich): precomputed, read through robustbench's loader."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from tta_streams.corruption_sets import CIFAR10_CLASSES, PRECOMPUTED_SETS, PrecomputedSource, cifar_c_source
from tta_streams.datasets.catalogue import DatasetInfo, register_dataset


def _load(data_dir: Path | None) -> PrecomputedSource:
    return cifar_c_source("cifar10-c", cast(Path, data_dir))  # DatasetInfo.source requires a data_dir


INFO = register_dataset(
    DatasetInfo(
        name="cifar10-c",
        aliases=("cifar10",),
        base="cifar10",
        input_shape=(3, 32, 32),
        num_classes=10,
        classes=CIFAR10_CLASSES,
        load=_load,
        table="cifar",
        folder=PRECOMPUTED_SETS["cifar10-c"].folder,
        url=PRECOMPUTED_SETS["cifar10-c"].url,
    )
)
