"""streams: reproducible test streams for test-time adaptation: a source of images, corruptions applied on
the fly (or read precomputed), an order of the labels and a setting of the domains (``Stream``)."""

from tta_streams.corruption_sets import PrecomputedSource, cifar_c, cifar_c_source, imagenet_c, imagenet_c_source
from tta_streams.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, corrupt
from tta_streams.datasets import DatasetInfo, get_dataset, list_datasets, register_dataset
from tta_streams.fmnist import fashion_mnist
from tta_streams.imageset import ImageSet
from tta_streams.orderings import ORDERS, LabelStats, label_stats
from tta_streams.parsing import parse_corruptions, parse_severities
from tta_streams.settings import SETTINGS
from tta_streams.stream import Batch, Stream

__all__ = [
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "ORDERS",
    "SETTINGS",
    "Batch",
    "DatasetInfo",
    "ImageSet",
    "LabelStats",
    "PrecomputedSource",
    "Stream",
    "cifar_c",
    "cifar_c_source",
    "corrupt",
    "fashion_mnist",
    "get_dataset",
    "imagenet_c",
    "imagenet_c_source",
    "label_stats",
    "list_datasets",
    "parse_corruptions",
    "parse_severities",
    "register_dataset",
]
