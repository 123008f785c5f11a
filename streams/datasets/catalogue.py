"""The dataset catalogue: one :class:`DatasetInfo` per test set, registered once, read by ``Stream``
and the benchmark (names, input shapes, classes, where the data comes from)."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tta_streams.corruption_sets import PrecomputedSource
from tta_streams.imageset import ImageSet

__all__ = ["DatasetInfo", "get_dataset", "list_datasets", "register_dataset"]


def _spelling(name: str) -> str:
    """Case, ``-``, ``_`` and blanks ignored: ``"CIFAR-10-C"`` and ``"cifar10c"`` are one spelling."""
    return re.sub(r"[-_\s]", "", name.lower())


@dataclass(frozen=True)
class DatasetInfo:
    """A test set of the benchmark, as :func:`register_dataset` records it (see :doc:`/streams`).

    Args:
        name: the canonical name (``"cifar10-c"``).
        base: the clean dataset its models are trained on, as model zoos name it (``"cifar10"``).
        input_shape: C x H x W.
        num_classes: the number of classes.
        load: ``load(data_dir)`` gives the stream source: an :class:`ImageSet` of clean images (corrupted on
            the fly) or a :class:`PrecomputedSource`.
        table: the corruption parameter table of its images (``"cifar"`` or ``"imagenet"``).
        classes: the class names in label order (empty where the loader reads them with the data).
        aliases: other accepted spellings (case, ``-`` and ``_`` are ignored when matching).
        folder: the folder ``load`` reads under ``data_dir`` (None: nothing to read, e.g. embedded data).
        url: where to get ``folder``.
    """

    name: str
    base: str
    input_shape: tuple[int, int, int]
    num_classes: int
    load: Callable[[Path | None], ImageSet | PrecomputedSource]
    table: str
    classes: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    folder: str | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(f"dataset {self.name!r}: {len(self.classes)} class names for {self.num_classes} classes")
        if self.folder is not None and self.url is None:
            raise ValueError(f"dataset {self.name!r}: a dataset read from {self.folder}/ needs the url to get it")

    @property
    def needs_files(self) -> bool:
        """Whether the data is read from ``data_dir`` (else it ships with the package)."""
        return self.folder is not None

    def source(self, data_dir: str | os.PathLike[str] | None = None) -> ImageSet | PrecomputedSource:
        """The stream source; ``data_dir`` is the folder holding :attr:`folder` (unused when there is none)."""
        if self.needs_files and data_dir is None:
            raise ValueError(
                f"dataset {self.name} is read from files: pass data_dir (--data-dir), the folder holding "
                f"{self.folder}/ (download it from {self.url})"
            )
        return self.load(None if data_dir is None else Path(data_dir))


_CATALOGUE: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add ``info`` to the catalogue; its name and aliases must not match a registered dataset's."""
    for spelling in (info.name, *info.aliases):
        taken = _find(spelling)
        if taken is not None:
            raise ValueError(f"dataset {info.name!r}: the name {spelling!r} is taken by dataset {taken.name!r}")
    _CATALOGUE[info.name] = info
    return info


def list_datasets() -> list[str]:
    """The canonical names of the registered datasets, in registration order."""
    return list(_CATALOGUE)


def _find(name: str) -> DatasetInfo | None:
    key = _spelling(name)
    for info in _CATALOGUE.values():
        if key in {_spelling(n) for n in (info.name, *info.aliases)}:
            return info
    return None


def get_dataset(name: str) -> DatasetInfo:
    """The dataset ``name`` or one of its aliases spells; ValueError naming the known ones otherwise."""
    info = _find(name) if isinstance(name, str) else None
    if info is None:
        spellings = {s: i.name for i in _CATALOGUE.values() for s in (i.name, *i.aliases)}
        close = difflib.get_close_matches(str(name).lower(), list(spellings), n=1)
        hint = f" (did you mean {spellings[close[0]]!r}?)" if close else ""
        raise ValueError(f"unknown dataset {name!r}{hint}; choose from: {', '.join(_CATALOGUE)}")
    return info
