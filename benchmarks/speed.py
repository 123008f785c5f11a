"""Throughput of each policy: images per second of an adapted model, and the ratio to ``source``.

Method: every policy gets its own adapted copy of the model; after ``warmup`` untimed forwards, the
policies are timed in turns (round-robin over ``repeats`` rounds, so load on a shared machine affects all
of them alike), each turn ``batches_per_repeat`` forwards of one fixed batch under
``torch.inference_mode``; the reported figure is the median over rounds.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import tta

INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "fmnist-c": (1, 28, 28),
    "cifar10-c": (3, 32, 32),
    "cifar100-c": (3, 32, 32),
    "imagenet-c": (3, 224, 224),
}


@dataclasses.dataclass(frozen=True)
class SpeedResult:
    """Median throughput of one policy and its ratio to ``source`` (NaN when source was not timed)."""

    policy: str
    images_per_s: float
    ratio_to_source: float
    runs: tuple[float, ...]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_speed(
    model: nn.Module,
    policies: Sequence[str],
    *,
    input_shape: Sequence[int],
    batch_size: int = 64,
    options: dict[str, dict[str, Any]] | None = None,
    warmup: int = 3,
    repeats: int = 10,
    batches_per_repeat: int = 5,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> list[SpeedResult]:
    """Time ``policies`` on ``model`` (see the module docstring); ``source`` is always timed for the ratio."""
    if batch_size < 1 or repeats < 1 or batches_per_repeat < 1 or warmup < 0:
        raise ValueError("batch_size, repeats and batches_per_repeat must be >= 1 and warmup >= 0")
    device = torch.device(device)
    options = options or {}
    names = list(dict.fromkeys(["source", *policies]))
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((batch_size, *input_shape), generator=generator).to(device)
    base = model.to(device).eval()
    models = {name: tta.adapt(copy.deepcopy(base), name, **options.get(name, {})).eval() for name in names}
    timings: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for name, adapted in models.items():
            for _ in range(warmup):
                adapted(x)
        _synchronize(device)
        for _ in range(repeats):
            for name, adapted in models.items():
                start = time.perf_counter()
                for _ in range(batches_per_repeat):
                    adapted(x)
                _synchronize(device)
                timings[name].append(batch_size * batches_per_repeat / (time.perf_counter() - start))
    source = statistics.median(timings["source"])
    return [
        SpeedResult(
            policy=name,
            images_per_s=statistics.median(timings[name]),
            ratio_to_source=statistics.median(timings[name]) / source,
            runs=tuple(timings[name]),
        )
        for name in names
        if name in policies
    ]
