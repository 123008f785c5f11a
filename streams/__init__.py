from streams.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, corrupt
from streams.corruption_sets import PrecomputedSource, cifar_c, cifar_c_source, imagenet_c, imagenet_c_source
from streams.datasets import DatasetInfo, get_dataset, list_datasets, register_dataset
from streams.fmnist import fashion_mnist
from streams.imageset import ImageSet
from streams.orderings import ORDERS, LabelStats, label_stats
from streams.parsing import parse_corruptions, parse_severities
from streams.settings import SETTINGS
from streams.stream import Batch, Stream
