"""The corruption catalogue: one :class:`Corruption` record per corruption, registered once. Its tables
are printed on :doc:`/corruptions`.

A record holds the batched function, its parameters at the five severities in both tables and how it
treats grayscale. The parameters are transcribed from the reference scripts of Hendrycks & Dietterich
(repository hendrycks/robustness, ``ImageNet-C/create_c/make_cifar_c.py`` for ``cifar`` and
``make_imagenet_c.py`` for ``imagenet``). Entry ``k`` of each list is severity ``k + 1``; tuples keep the
reference's field order, named in the comment above each record.

A new corruption is a function ``fn(x, rng, *params, **table_kwargs)`` (x: float32 N x C x H x W on
0..1, returning 0..255) in one of the family modules and one ``register_corruption`` call here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeGuard

import numpy as np
from torch import Tensor

from tta_streams.corruptions import blur, digital, noise, weather

__all__ = [
    "CORRUPTIONS", "EXTRA_CORRUPTIONS", "TABLES", "TABLE_NAMES", "Corruption", "check_severity", "get_corruption",
    "is_int", "list_corruptions", "register_corruption",
]  # fmt: skip

TABLE_NAMES: tuple[str, ...] = ("cifar", "imagenet")
"""The parameter tables: the CIFAR script's (small images) and the ImageNet script's."""


@dataclass(frozen=True)
class Corruption:
    """One corruption: ``fn(x, rng, *row, **table_kwargs[table])`` with ``row`` its severity's entry.

    ``cifar`` / ``imagenet``: the five severities' parameters (a number or a tuple each).
    ``colour_only``: the corruption needs RGB; grayscale goes through RGB replication and luma.
    ``standard``: one of the 15 benchmark corruptions (else an extra, outside ``"all"``).
    ``table_kwargs``: reference settings that depend on the table but not on the severity, by table.
    ``assets``: finds the files the corruption reads, or raises ImportError naming the package to install.
    """

    name: str
    fn: Callable[..., Tensor]
    cifar: Sequence[Any]  # stored as a tuple (__post_init__)
    imagenet: Sequence[Any]
    colour_only: bool = False
    standard: bool = True
    table_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    assets: Callable[[], object] | None = None

    def __post_init__(self) -> None:
        for table in TABLE_NAMES:
            rows = tuple(getattr(self, table))
            if len(rows) != 5:
                raise ValueError(f"corruption {self.name!r}: the {table} table needs 5 severities, got {len(rows)}")
            object.__setattr__(self, table, rows)
        object.__setattr__(self, "table_kwargs", MappingProxyType({t: dict(k) for t, k in self.table_kwargs.items()}))

    def params(self, table: str, severity: int) -> tuple[Any, ...]:
        """The positional parameters at ``severity`` (1..5) in ``table``."""
        row = getattr(self, table)[severity - 1]
        return row if isinstance(row, tuple) else (row,)


_CATALOGUE: dict[str, Corruption] = {}


def register_corruption(record: Corruption) -> Corruption:
    """Add ``record`` to the catalogue under its name (a name is registered once)."""
    if record.name in _CATALOGUE:
        raise ValueError(f"corruption {record.name!r} is already registered")
    _CATALOGUE[record.name] = record
    return record


def list_corruptions(*, standard_only: bool = False) -> list[str]:
    """Registered names in catalogue order: the 15 standard ones first, then the extras."""
    records = _CATALOGUE.values()
    return [r.name for r in records if r.standard] + (
        [] if standard_only else [r.name for r in records if not r.standard]
    )


def get_corruption(name: str) -> Corruption:
    """The record of ``name``; ValueError naming the valid names (and the nearest one) otherwise."""
    if name in _CATALOGUE:
        return _CATALOGUE[name]
    close = difflib.get_close_matches(str(name), list(_CATALOGUE), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown corruption {name!r}{hint}; valid names: {', '.join(list_corruptions())}")


def is_int(value: object) -> TypeGuard[int | np.integer]:
    """Whether ``value`` is an integer (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_severity(severity: object) -> int:
    """``severity`` as an int if it is an integer in 1..5, else a ValueError naming it."""
    if not is_int(severity) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    return int(severity)


_E = 244  # the ImageNet script multiplies by 244 (a typo for 224 it keeps); so do we

register_corruption(
    Corruption(
        "gaussian_noise",
        noise.gaussian_noise,  # std on [0, 1]
        cifar=[0.04, 0.06, 0.08, 0.09, 0.10],
        imagenet=[0.08, 0.12, 0.18, 0.26, 0.38],
    )
)
register_corruption(
    Corruption(
        "shot_noise",
        noise.shot_noise,  # photons per unit intensity
        cifar=[500, 250, 100, 75, 50],
        imagenet=[60, 25, 12, 5, 3],
    )
)
register_corruption(
    Corruption(
        "impulse_noise",
        noise.impulse_noise,  # fraction of flipped values
        cifar=[0.01, 0.02, 0.03, 0.05, 0.07],
        imagenet=[0.03, 0.06, 0.09, 0.17, 0.27],
    )
)
register_corruption(
    Corruption(
        "defocus_blur",
        blur.defocus_blur,  # radius, alias blur
        cifar=[(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        imagenet=[(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    )
)
register_corruption(
    Corruption(
        "glass_blur",
        blur.glass_blur,  # sigma, delta, iters
        cifar=[(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
        imagenet=[(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    )
)
register_corruption(
    Corruption(
        "motion_blur",
        blur.motion_blur,  # radius, sigma
        cifar=[(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
        imagenet=[(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    )
)
register_corruption(
    Corruption(
        "zoom_blur",
        blur.zoom_blur,  # numpy.arange(start, stop, step) of zoom factors
        cifar=[(1.0, 1.06, 0.01), (1.0, 1.11, 0.01), (1.0, 1.16, 0.01), (1.0, 1.21, 0.01), (1.0, 1.26, 0.01)],
        imagenet=[(1.0, 1.11, 0.01), (1.0, 1.16, 0.01), (1.0, 1.21, 0.02), (1.0, 1.26, 0.02), (1.0, 1.31, 0.03)],
    )
)
register_corruption(
    Corruption(
        "snow",
        weather.snow,  # loc, scale, zoom, threshold, blur radius, blur sigma, blend
        cifar=[
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ],
        imagenet=[
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ],
    )
)
register_corruption(
    Corruption(
        "frost",
        weather.frost,  # image weight, frost weight
        cifar=[(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
        imagenet=[(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
        colour_only=True,
        # the CIFAR script shrinks the frost textures by 5
        table_kwargs={"cifar": {"texture_scale": 0.2}, "imagenet": {"texture_scale": 1.0}},
        assets=weather.frost_texture_files,
    )
)
register_corruption(
    Corruption(
        "fog",
        weather.fog,  # strength, wibble decay
        cifar=[(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
        imagenet=[(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],
    )
)
register_corruption(
    Corruption(
        "brightness",
        digital.brightness,  # added to HSV value
        cifar=[0.05, 0.1, 0.15, 0.2, 0.3],
        imagenet=[0.1, 0.2, 0.3, 0.4, 0.5],
    )
)
register_corruption(
    Corruption(
        "contrast",
        digital.contrast,  # factor around the channel mean
        cifar=[0.75, 0.5, 0.4, 0.3, 0.15],
        imagenet=[0.4, 0.3, 0.2, 0.1, 0.05],
    )
)
register_corruption(
    Corruption(
        "elastic_transform",
        digital.elastic_transform,
        # displacement scale, displacement smoothing sigma, affine jitter (pixels)
        cifar=[
            (32 * 0, 32 * 0, 32 * 0.08),
            (32 * 0.05, 32 * 0.2, 32 * 0.07),
            (32 * 0.08, 32 * 0.06, 32 * 0.06),
            (32 * 0.1, 32 * 0.04, 32 * 0.05),
            (32 * 0.1, 32 * 0.03, 32 * 0.03),
        ],
        imagenet=[
            (_E * 2, _E * 0.7, _E * 0.1),
            (_E * 2, _E * 0.08, _E * 0.2),
            (_E * 0.05, _E * 0.01, _E * 0.02),
            (_E * 0.07, _E * 0.01, _E * 0.02),
            (_E * 0.12, _E * 0.01, _E * 0.02),
        ],
    )
)
register_corruption(
    Corruption(
        "pixelate",
        digital.pixelate,  # downscale factor
        cifar=[0.95, 0.9, 0.85, 0.75, 0.65],
        imagenet=[0.6, 0.5, 0.4, 0.3, 0.25],
    )
)
register_corruption(
    Corruption(
        "jpeg_compression",
        digital.jpeg_compression,  # JPEG quality
        cifar=[80, 65, 58, 50, 40],
        imagenet=[25, 18, 15, 10, 7],
    )
)
register_corruption(
    Corruption(
        "speckle_noise",
        noise.speckle_noise,  # multiplicative std
        cifar=[0.06, 0.1, 0.12, 0.16, 0.2],
        imagenet=[0.15, 0.2, 0.35, 0.45, 0.6],
        standard=False,
    )
)
register_corruption(
    Corruption(
        "gaussian_blur",
        blur.gaussian_blur,  # sigma
        cifar=[0.4, 0.6, 0.7, 0.8, 1],
        imagenet=[1, 2, 3, 4, 6],
        standard=False,
    )
)
register_corruption(
    Corruption(
        "spatter",
        weather.spatter,  # loc, scale, sigma, threshold, intensity, mode (0 water, 1 mud)
        cifar=[
            (0.62, 0.1, 0.7, 0.7, 0.5, 0),
            (0.65, 0.1, 0.8, 0.7, 0.5, 0),
            (0.65, 0.3, 1, 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1),
            (0.65, 0.1, 0.5, 0.68, 0.6, 1),
        ],
        imagenet=[
            (0.65, 0.3, 4, 0.69, 0.6, 0),
            (0.65, 0.3, 3, 0.68, 0.6, 0),
            (0.65, 0.3, 2, 0.68, 0.5, 0),
            (0.65, 0.3, 1, 0.65, 1.5, 1),
            (0.67, 0.4, 1, 0.65, 1.5, 1),
        ],
        colour_only=True,
        standard=False,
    )
)
register_corruption(
    Corruption(
        "saturate",
        digital.saturate,  # saturation factor, offset
        cifar=[(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
        imagenet=[(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],
        colour_only=True,
        standard=False,
    )
)

CORRUPTIONS: tuple[str, ...] = tuple(list_corruptions(standard_only=True))
"""The 15 benchmark corruptions in the standard order (what ``"all"`` means)."""
EXTRA_CORRUPTIONS: tuple[str, ...] = tuple(n for n in list_corruptions() if n not in CORRUPTIONS)
"""The four extra corruptions of the reference scripts."""
TABLES: dict[str, dict[str, list[Any]]] = {
    table: {name: list(getattr(_CATALOGUE[name], table)) for name in list_corruptions()} for table in TABLE_NAMES
}
"""Derived view: table -> corruption -> the five severities' parameters."""
