"""The datasets a stream and the benchmark know by name: one module per dataset, registered below.

A new dataset is a module that calls ``register_dataset(DatasetInfo(...))`` and one import line here;
the import order is the order :func:`list_datasets` (and the CLI's help) gives.
"""

from tta_streams.datasets.catalogue import (
    DatasetInfo,
    get_dataset,
    list_datasets,
    register_dataset,
)

# isort: off
from tta_streams.datasets import fmnist_c  # noqa: F401
from tta_streams.datasets import cifar10_c  # noqa: F401
from tta_streams.datasets import cifar100_c  # noqa: F401
from tta_streams.datasets import imagenet_c  # noqa: F401
# isort: on

__all__ = ["DatasetInfo", "get_dataset", "list_datasets", "register_dataset"]
