"""Precomputed corruption sets through robustbench's own loaders (see :doc:`/streams`): CIFAR-10-C,
CIFAR-100-C, ImageNet-C; and :class:`PrecomputedSource`, the stream's view of such a set.

robustbench downloads when a file is missing; here the files are checked first, so offline a missing
file is one FileNotFoundError naming it and where to get it. robustbench returns floats in [0, 1]
computed from uint8 files; they are converted back exactly, so every source yields the same
:class:`~tta_streams.ImageSet` (uint8).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from tta_streams._robustbench import import_robustbench
from tta_streams.corruptions import check_severity, get_corruption, is_int
from tta_streams.imageset import ImageSet

__all__ = ["PrecomputedSource", "cifar_c", "cifar_c_source", "imagenet_c", "imagenet_c_source"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear
pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark
shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone
television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)


@dataclass(frozen=True)
class PrecomputedSet:
    """A precomputed set this module reads: its folder under ``data_dir``, where to get it, its classes (None:
    read with the data) and robustbench's loader function for it (None: read here)."""

    folder: str
    url: str
    classes: tuple[str, ...] | None = None
    loader: str | None = None


PRECOMPUTED_SETS: dict[str, PrecomputedSet] = {
    "cifar10-c": PrecomputedSet("CIFAR-10-C", "https://zenodo.org/records/2535967", CIFAR10_CLASSES, "load_cifar10c"),
    "cifar100-c": PrecomputedSet(
        "CIFAR-100-C", "https://zenodo.org/records/3555552", CIFAR100_CLASSES, "load_cifar100c"
    ),
    "imagenet-c": PrecomputedSet(
        "ImageNet-C", "https://zenodo.org/records/2235448 (see https://github.com/hendrycks/robustness)"
    ),
}
"""The sets read here, by dataset name (``tta_streams.datasets`` registers each with these facts)."""
_ROBUSTBENCH_LOADERS = [name for name, info in PRECOMPUTED_SETS.items() if info.loader is not None]
CIFAR_C_PER_SEVERITY = 10_000
"""Images per severity in a CIFAR-C file (robustbench slices the stacked file by this count)."""
IMAGENET_C_MAX = 5_000
"""robustbench evaluates ImageNet-C on a fixed list of 5,000 validation images."""


def _check_domain(corruption: str, severity: int) -> None:
    get_corruption(corruption)
    check_severity(severity)


def _check_n(n_examples: int | None, available: int, what: str) -> int:
    if n_examples is None:
        return available
    if not is_int(n_examples) or n_examples < 1:
        raise ValueError(f"n_examples must be a positive integer or None, got {n_examples!r}")
    if n_examples > available:
        raise ValueError(f"n_examples={n_examples} is larger than {what}, which holds {available} images")
    return int(n_examples)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Undo robustbench's ``uint8 / 255`` exactly (float32(k / 255) * 255 rounds back to k)."""
    return (x * 255).round_().clamp_(0, 255).to(torch.uint8)


def _cifar_files(name: str, corruption: str, data_dir: str | Path) -> tuple[Path, Path]:
    if name not in _ROBUSTBENCH_LOADERS:
        raise ValueError(
            f"unknown precomputed set {name!r}; choose from: {', '.join(_ROBUSTBENCH_LOADERS)}, imagenet-c"
        )
    info = PRECOMPUTED_SETS[name]
    folder, url = info.folder, info.url
    root = Path(data_dir).expanduser() / folder
    for path in (root / f"{corruption}.npy", root / "labels.npy"):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing. {folder} is not in {data_dir}: download {folder}.tar from {url} and "
                f"unpack it into {data_dir} (giving {root}/<corruption>.npy and labels.npy)."
            )
    return root / f"{corruption}.npy", root / "labels.npy"


def cifar_c(name: str, corruption: str, severity: int, data_dir: str | Path, n_examples: int | None = None) -> ImageSet:
    """One domain of CIFAR-10-C or CIFAR-100-C, read through robustbench, as an :class:`ImageSet` marked
    ``precorrupted``; to stream the set, use :func:`cifar_c_source`.

    Args:
        name: ``"cifar10-c"`` or ``"cifar100-c"``.
        corruption: one of the 15 standard corruptions (or an extra one the files hold).
        severity: an integer in 1..5.
        data_dir: the folder holding ``CIFAR-10-C/`` or ``CIFAR-100-C/`` (a missing file is a
            FileNotFoundError naming it and where to get it).
        n_examples: the first ``n_examples`` images (None: all 10,000).
    """
    _check_domain(corruption, severity)
    images_path, _ = _cifar_files(name, corruption, data_dir)
    n = _check_n(n_examples, CIFAR_C_PER_SEVERITY, name)
    # _cifar_files took only the robustbench sets, which have a loader and their classes
    info = PRECOMPUTED_SETS[name]
    loader, classes = cast(str, info.loader), cast(tuple[str, ...], info.classes)
    rb = import_robustbench()
    x, y = getattr(rb.data, loader)(n, int(severity), str(Path(data_dir).expanduser()), False, [corruption])
    if len(x) < n:
        raise ValueError(
            f"{images_path} holds too few images for severity {severity}: expected 5 x "
            f"{CIFAR_C_PER_SEVERITY} stacked, got {len(x)} of the {n} requested"
        )
    return ImageSet(_to_uint8(x), y.to(torch.int64), list(classes), precorrupted=(name, corruption, int(severity)))


def _cifar_labels(name: str, corruption: str, severity: int, data_dir: str | Path, n: int | None) -> torch.Tensor:
    _check_domain(corruption, severity)
    _, labels_path = _cifar_files(name, corruption, data_dir)
    n = _check_n(n, CIFAR_C_PER_SEVERITY, name)
    return torch.from_numpy(np.load(labels_path, mmap_mode="r", allow_pickle=False)[:n].astype(np.int64))


def _imagenet_helper_files() -> tuple[list[str], list[str]]:
    """robustbench's fixed 5,000 image ids (``wnid/file.JPEG``) and the 1,000 wnids in index order."""
    spec = importlib.util.find_spec("robustbench")
    if spec is None or spec.origin is None:
        raise ImportError(
            "ImageNet-C's image list needs the robustbench package, which is not installed: "
            "pip install 'tta-norm[bench]'"
        )
    helper = Path(spec.origin).parent / "helper_files"
    ids = [line.strip() for line in (helper / "imagenet_test_image_ids.txt").read_text().splitlines() if line.strip()]
    class_to_id = json.loads((helper / "imagenet_class_to_id_map.json").read_text())
    return ids, sorted(class_to_id, key=class_to_id.__getitem__)


def _imagenet_check(corruption: str, severity: int, data_dir: str | Path, n_examples: int | None):
    _check_domain(corruption, severity)
    n = _check_n(n_examples, IMAGENET_C_MAX, "robustbench's ImageNet-C evaluation set")
    info = PRECOMPUTED_SETS["imagenet-c"]
    folder = Path(data_dir).expanduser() / info.folder / corruption / str(severity)
    hint = f"download {info.folder} from {info.url} and unpack it into {Path(data_dir) / info.folder}"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing: {hint} (layout {info.folder}/<corruption>/<severity>/<wnid>/).")
    ids, wnids = _imagenet_helper_files()
    present = {p.name for p in folder.iterdir() if p.is_dir()}
    if present != set(wnids):
        missing = sorted(set(wnids) - present)
        raise FileNotFoundError(
            f"{folder} must hold exactly the 1000 ImageNet class folders (robustbench numbers classes by "
            f"the sorted folder names); {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(present - set(wnids))} unexpected: {hint}."
        )
    for image_id in ids[:n]:
        if not (folder / image_id).is_file():
            raise FileNotFoundError(f"{folder / image_id} is missing: {hint}.")
    return n, ids, wnids


def imagenet_c(corruption: str, severity: int, data_dir: str | Path, n_examples: int | None = None) -> ImageSet:
    """One domain of ImageNet-C: robustbench's fixed list of 5,000 validation images, decoded from
    ``<data_dir>/ImageNet-C/<corruption>/<severity>/<wnid>/*.JPEG``, as an :class:`ImageSet` marked
    ``precorrupted``; to stream the set, use :func:`imagenet_c_source`.

    Args:
        corruption: a corruption name.
        severity: an integer in 1..5.
        data_dir: the folder holding ``ImageNet-C/`` (a missing folder is a FileNotFoundError naming it).
        n_examples: the first ``n_examples`` of the 5,000 images (None: all).
    """
    n, _, wnids = _imagenet_check(corruption, severity, data_dir, n_examples)
    rb = import_robustbench()
    x, y = rb.data.load_imagenetc(n, int(severity), str(Path(data_dir).expanduser()), False, [corruption])
    return ImageSet(_to_uint8(x), y.to(torch.int64), wnids, precorrupted=("imagenet-c", corruption, int(severity)))


def _imagenet_labels(corruption: str, severity: int, data_dir: str | Path, n: int | None) -> torch.Tensor:
    n, ids, wnids = _imagenet_check(corruption, severity, data_dir, n)
    index = {w: i for i, w in enumerate(wnids)}
    return torch.tensor([index[i.split("/")[0]] for i in ids[:n]], dtype=torch.int64)


@dataclass(frozen=True)
class PrecomputedSource:
    """Domains stored already corrupted: ``Stream`` reads them and never corrupts again.

    ``load(corruption, severity, n_examples) -> ImageSet`` gives one domain. ``labels`` (same
    arguments) gives its labels cheaply, so a stream can plan its orderings without decoding images;
    by default it loads the domain. ``fingerprint(corruption, severity) -> str`` identifies the files
    for the on-disk cache (used by the ``mixed`` setting); by default the name, corruption and severity.
    """

    name: str
    load: Callable[[str, int, int | None], ImageSet]
    labels: Callable[[str, int, int | None], torch.Tensor] | None = None
    fingerprint: Callable[[str, int], str] | None = None

    def domain_labels(self, corruption: str, severity: int, n_examples: int | None) -> torch.Tensor:
        if self.labels is not None:
            return self.labels(corruption, severity, n_examples)
        return self.load(corruption, severity, n_examples).labels

    def domain_fingerprint(self, corruption: str, severity: int) -> str:
        if self.fingerprint is not None:
            return self.fingerprint(corruption, severity)
        return f"{self.name}|{corruption}|{severity}"


def _stat(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def cifar_c_source(name: str, data_dir: str | Path) -> PrecomputedSource:
    """CIFAR-10-C / CIFAR-100-C under ``data_dir`` as a stream source (see :func:`cifar_c`)."""
    if name not in _ROBUSTBENCH_LOADERS:
        raise ValueError(f"unknown precomputed set {name!r}; choose from: {', '.join(_ROBUSTBENCH_LOADERS)}")

    def fingerprint(corruption: str, severity: int) -> str:
        files = _cifar_files(name, corruption, data_dir)
        return "|".join([name, corruption, str(severity), *(_stat(f) for f in files)])

    return PrecomputedSource(
        name=name,
        load=lambda c, s, n: cifar_c(name, c, s, data_dir, n),
        labels=lambda c, s, n: _cifar_labels(name, c, s, data_dir, n),
        fingerprint=fingerprint,
    )


def imagenet_c_source(data_dir: str | Path) -> PrecomputedSource:
    """ImageNet-C under ``data_dir`` as a stream source (see :func:`imagenet_c`)."""

    def fingerprint(corruption: str, severity: int) -> str:
        folder = Path(data_dir).expanduser() / PRECOMPUTED_SETS["imagenet-c"].folder / corruption / str(severity)
        return f"imagenet-c|{corruption}|{severity}|{_stat(folder)}"

    return PrecomputedSource(
        name="imagenet-c",
        load=lambda c, s, n: imagenet_c(c, s, data_dir, n),
        labels=lambda c, s, n: _imagenet_labels(c, s, data_dir, n),
        fingerprint=fingerprint,
    )
