"""ImageNet-C (Hendrycks & Dietterich): robustbench's 5,000 validation images, precomputed.

The class names are the 1,000 WordNet ids of robustbench's helper files, read with the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from tta_streams.corruption_sets import PRECOMPUTED_SETS, PrecomputedSource, imagenet_c_source
from tta_streams.datasets.catalogue import DatasetInfo, register_dataset


def _load(data_dir: Path | None) -> PrecomputedSource:
    return imagenet_c_source(cast(Path, data_dir))  # DatasetInfo.source requires a data_dir


INFO = register_dataset(
    DatasetInfo(
        name="imagenet-c",
        aliases=("imagenet",),
        base="imagenet",
        input_shape=(3, 224, 224),
        num_classes=1000,
        load=_load,
        table="imagenet",
        folder=PRECOMPUTED_SETS["imagenet-c"].folder,
        url=PRECOMPUTED_SETS["imagenet-c"].url,
    )
)
