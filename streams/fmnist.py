"""Fashion-MNIST: the embedded test split, and the training split from disk.

The test split ships inside the package as the original idx files (MIT licence beside them in
``streams/data/fashion_mnist/``), so the default benchmark runs offline. The training split is read
from ``root`` (a flat folder with the four ``.gz`` files, or torchvision's ``root/FashionMNIST/raw/``),
else from Debian's ``dataset-fashion-mnist`` package, else downloaded by torchvision.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from tta_streams._extras import require
from tta_streams.imageset import ImageSet

__all__ = ["CLASSES", "fashion_mnist", "read_idx"]

log = logging.getLogger(__name__)

CLASSES: list[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` installs the files (``dpkg -L dataset-fashion-mnist``)."""


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (LeCun's MNIST format, gzipped or not) of unsigned bytes into an array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    if data[2] != 0x08:
        raise ValueError(f"{path}: idx type code {data[2]:#x} is not unsigned byte (0x08)")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but the file holds {body.size} bytes")
    return body.reshape(shape)


def _load(folder: Path, split: str) -> ImageSet:
    image_file, label_file = (folder / name for name in _FILES[split])
    images = read_idx(image_file)
    labels = read_idx(label_file)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"{folder}: images {images.shape} and labels {labels.shape} do not match")
    return ImageSet(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(CLASSES),
    )


def _has_split(folder: Path, split: str) -> bool:
    return all((folder / name).is_file() for name in _FILES[split])


def _candidates(root: Path) -> list[Path]:
    """A flat folder, or torchvision's raw layout below it."""
    return [root, root / "FashionMNIST" / "raw"]


def _debian_dirs() -> list[Path]:
    """Folders where Debian's dataset-fashion-mnist package put the files, if it is installed: the usual
    place, else wherever ``dpkg -L dataset-fashion-mnist`` lists them."""
    if _has_split(DEBIAN_DIR, "train") or not shutil.which("dpkg"):
        return [DEBIAN_DIR]
    try:
        listing = subprocess.run(
            ["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        listing = ""
    return [DEBIAN_DIR] + [Path(line).parent for line in listing.splitlines() if line.endswith(_FILES["train"][0])]


def _download(root: Path) -> Path:
    datasets = require("torchvision.datasets", "downloading the Fashion-MNIST training split")
    datasets.FashionMNIST(str(root), train=True, download=True)  # only fetches; we parse the raw files ourselves
    return root / "FashionMNIST" / "raw"


def fashion_mnist(
    split: str = "test", root: str | os.PathLike[str] | None = None, *, download: bool = True
) -> ImageSet:
    """Fashion-MNIST as an :class:`ImageSet` (uint8, N x 1 x 28 x 28).

    Args:
        split: ``"test"``: the embedded 10,000 images (or the test files in ``root`` when given);
            ``"train"``: the 60,000 training images from ``root``, else Debian's ``dataset-fashion-mnist``,
            else a torchvision download.
        root: a folder in torchvision's raw layout (for ``"train"``, also where a download goes; default
            ``$TTA_CACHE_DIR/datasets`` or ``~/.cache/tta/datasets``).
        download: whether the training split may be downloaded by torchvision when no copy is found.

    See :doc:`/streams`.
    """
    if split not in _FILES:
        raise ValueError(f"unknown split {split!r}; choose 'test' or 'train'")
    folders = _candidates(Path(root).expanduser()) if root is not None else []
    if split == "test" and root is None:
        folders = [Path(str(resources.files("tta_streams") / "data" / "fashion_mnist"))]
    if split == "train":
        folders += _debian_dirs()
    for i, folder in enumerate(folders):
        if _has_split(folder, split):
            if root is not None and i >= 2:
                log.info("Fashion-MNIST %s split not in %s; using %s", split, root, folder)
            log.debug("reading Fashion-MNIST %s split from %s", split, folder)
            return _load(folder, split)
    searched = ", ".join(str(f) for f in folders) or "(nowhere)"
    if split == "train" and download:
        target = Path(root).expanduser() if root is not None else _default_download_root()
        try:
            return _load(_download(target), split)
        except Exception as error:  # torchvision raises several kinds (URLError, RuntimeError, ...)
            raise FileNotFoundError(
                f"Fashion-MNIST training split not found (searched {searched}) and the download into "
                f"{target} failed ({error}). Install Debian's dataset-fashion-mnist package, or put "
                f"{', '.join(_FILES['train'])} from https://github.com/zalandoresearch/fashion-mnist into a "
                "folder and pass it as root."
            ) from error
    raise FileNotFoundError(
        f"Fashion-MNIST {split} split not found: no {_FILES[split][0]} and {_FILES[split][1]} in {searched}. "
        "Install Debian's dataset-fashion-mnist package, or download the files from "
        "https://github.com/zalandoresearch/fashion-mnist into a folder and pass it as root"
        + (" (or allow download=True)." if split == "train" else ".")
    )


def _default_download_root() -> Path:
    from tta_streams.cache import default_cache_dir

    return default_cache_dir() / "datasets"
