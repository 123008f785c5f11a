"""Suite-wide settings: tests run tiny tensors, where one intra-op thread is fastest and steadiest."""

import importlib
import sys

import pytest
import torch

torch.set_num_threads(1)


TOY_DATASET = """
import torch

from tta_streams import DatasetInfo, ImageSet, register_dataset


def _load(data_dir):
    images = torch.randint(0, 256, (48, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return ImageSet(images, torch.arange(48) % 4, ["a", "b", "c", "d"])


register_dataset(DatasetInfo(name="toy-c", aliases=("toy",), base="toy", input_shape=(3, 8, 8), num_classes=4,
                             classes=("a", "b", "c", "d"), load=_load, table="cifar"))
"""


@pytest.fixture
def toy_dataset(tmp_path, monkeypatch) -> str:
    """A throwaway dataset, ``toy-c``, registered by a module of its own (48 RGB 8 x 8 images, 4 classes);
    the catalogue is restored afterwards."""
    from tta_streams.datasets import catalogue

    monkeypatch.setattr(catalogue, "_CATALOGUE", dict(catalogue._CATALOGUE))
    (tmp_path / "toy_dataset_module.py").write_text(TOY_DATASET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toy_dataset_module", raising=False)
    importlib.import_module("toy_dataset_module")
    return "toy-c"
