"""Throughput of each method x policy: images per second of a learner, and the ratio to ``source``.

Method: every (method, policy) gets its own copy of the model, adapted with the policy and the method
attached (method ``none``: the adapted model alone); after ``warmup`` untimed forwards, they are timed in
turns (round-robin over ``repeats`` rounds, so load on a shared machine affects all of them alike), each
turn ``batches_per_repeat`` forwards of one fixed batch under ``torch.inference_mode``; the reported
figure is the median over rounds. A gradient method (Tent) takes its backward pass and optimizer step
inside its forward: that cost is in its figure, as it is in deployment. The ratio is to ``source`` under
``none``, timed always.
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
    """Median throughput of one (method, policy) and its ratio to ``source`` under ``none``."""

    policy: str
    images_per_s: float
    ratio_to_source: float
    runs: tuple[float, ...]
    method: str = "none"


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
    methods: Sequence[str] = ("none",),
    warmup: int = 3,
    repeats: int = 10,
    batches_per_repeat: int = 5,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> list[SpeedResult]:
    """Time ``methods`` x ``policies`` on ``model`` (see the module docstring); ``options`` by policy or
    method name. ``source`` under ``none`` is always timed for the ratio."""
    if batch_size < 1 or repeats < 1 or batches_per_repeat < 1 or warmup < 0:
        raise ValueError("batch_size, repeats and batches_per_repeat must be >= 1 and warmup >= 0")
    device = torch.device(device)
    options = options or {}
    wanted = [(method, policy) for method in methods for policy in policies]
    names = list(dict.fromkeys([("none", "source"), *wanted]))
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((batch_size, *input_shape), generator=generator).to(device)
    base = model.to(device).eval()
    models: dict[tuple[str, str], nn.Module] = {}
    for method, policy in names:
        adapted = tta.adapt(copy.deepcopy(base), policy, **options.get(policy, {})).eval()
        models[(method, policy)] = adapted if method == "none" else tta.attach_method(
            adapted, method, **options.get(method, {}))
    timings: dict[tuple[str, str], list[float]] = {name: [] for name in names}
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
    source = statistics.median(timings[("none", "source")])
    return [
        SpeedResult(
            policy=name[1],
            images_per_s=statistics.median(timings[name]),
            ratio_to_source=statistics.median(timings[name]) / source,
            runs=tuple(timings[name]),
            method=name[0],
        )
        for name in names
        if name in wanted
    ]
