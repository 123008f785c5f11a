"""Throughput of each method x policy: images per second of a learner, and its ratio to the unadapted
model and to ``source``.

Method: every (method, policy) gets its own copy of the model, adapted with the policy and the method
attached (method ``none``: the adapted model alone); the unadapted model (a copy of the input, its
BatchNorm layers untouched) and ``source`` under ``none`` are always timed too. After ``warmup`` untimed
forwards, they are timed in turns (round-robin over ``repeats`` rounds, so load on a shared machine
affects all of them alike), each turn ``batches_per_repeat`` forwards of one fixed batch under
``torch.inference_mode`` (the first warm-up forward, at least one, is timed alone: the first call). A
ratio is taken within each round (the two turns are seconds apart) and the median over rounds is
reported, with the quartiles of the per-round ratios to the unadapted model as its spread. A gradient
method (Tent) takes its backward pass and optimizer step inside its forward: that cost is in its figure,
as it is in deployment.

``compile=True`` times ``torch.compile(model, fullgraph=True)`` (inductor) of every model, the unadapted
one included, with the batch dimension marked dynamic; a method is attached to the compiled adapted
model (its forwards, and their backward, are compiled; its optimizer step and memory stay eager, as
``loss.backward()`` cannot be in a full graph); the first call's time (compiling included) is
reported, and whether a batch of another size (half the batch) recompiles (``torch.compiler.set_stance
("fail_on_recompile")`` refuses it if so), for the unadapted model too: a model's own operations may
guard on the batch size (the convolutions of PyTorch 2.14 recompile below a batch of 16, say).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import nn

import tta

#: The name the unadapted model is timed under.
UNADAPTED = ("none", "unadapted")


@dataclasses.dataclass(frozen=True)
class SpeedResult:
    """Median throughput of one (method, policy), its ratios to the unadapted model and to ``source``
    (medians of per-round ratios) and the quartiles of the per-round ratio to the unadapted model."""

    policy: str
    images_per_s: float
    ratio_to_source: float
    runs: tuple[float, ...]
    method: str = "none"
    ratio_to_unadapted: float = float("nan")
    spread: tuple[float, float] = (float("nan"), float("nan"))
    unadapted_images_per_s: float = float("nan")
    compile_s: float | None = None  # the first call, compiling included (compile=True)
    recompiles_on_batch_change: bool | None = None  # compile=True
    unadapted_compile_s: float | None = None  # the unadapted model's, for comparison (compile=True)
    unadapted_recompiles: bool | None = None  # whether the unadapted model itself recompiles (compile=True)
    other_batch_size: int | None = None  # the batch size of the recompile check (compile=True)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ratios(runs: Sequence[float], reference: Sequence[float]) -> list[float]:
    return [a / b for a, b in zip(runs, reference)]


def _recompiles(model: Callable[[torch.Tensor], Any], x: torch.Tensor) -> bool:
    """Whether ``model`` (compiled) needs a new graph for ``x``."""
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            model(x)
    except RuntimeError as error:
        if "recompil" not in str(error).lower():
            raise
        return True
    return False


def check_sizes(*, batch_size: int, warmup: int, repeats: int, batches_per_repeat: int) -> None:
    """Raise ValueError unless ``batch_size``, ``repeats`` and ``batches_per_repeat`` are >= 1 and
    ``warmup`` >= 0."""
    if batch_size < 1 or repeats < 1 or batches_per_repeat < 1 or warmup < 0:
        raise ValueError(
            f"batch size, repeats and batches per repeat must be >= 1 and warm-up >= 0; got "
            f"{batch_size}, {repeats}, {batches_per_repeat} and {warmup}"
        )


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
    compile: bool = False,
) -> list[SpeedResult]:
    """Time ``methods`` x ``policies`` on ``model`` (see the module docstring); ``options`` by policy or
    method name. The unadapted model and ``source`` under ``none`` are always timed for the ratios."""
    check_sizes(batch_size=batch_size, warmup=warmup, repeats=repeats, batches_per_repeat=batches_per_repeat)
    device = torch.device(device)
    options = options or {}
    wanted = [(method, policy) for method in methods for policy in policies]
    names = list(dict.fromkeys([UNADAPTED, ("none", "source"), *wanted]))
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((batch_size, *input_shape), generator=generator).to(device)
    other = torch.rand(
        (max(1, batch_size // 2) if batch_size > 2 else batch_size + 1, *input_shape), generator=generator
    ).to(device)
    base = model.to(device).eval()
    models: dict[tuple[str, str], Callable[[torch.Tensor], Any]] = {}
    for method, policy in names:
        if (method, policy) == UNADAPTED:
            timed: nn.Module = copy.deepcopy(base)
        else:
            timed = tta.adapt(copy.deepcopy(base), policy, **options.get(policy, {})).eval()
        if compile:
            timed = cast(nn.Module, torch.compile(timed, fullgraph=True))  # a compiled Module is an OptimizedModule
        if method != "none":  # a method's update (backward, optimizer step, memory) stays eager around it
            timed = tta.attach_method(timed, method, **options.get(method, {}))
        models[(method, policy)] = timed
    if compile:
        torch._dynamo.mark_dynamic(x, 0)
        torch._dynamo.mark_dynamic(other, 0)
    first_call: dict[tuple[str, str], float] = {}
    recompiles: dict[tuple[str, str], bool] = {}
    timings: dict[tuple[str, str], list[float]] = {name: [] for name in names}
    # Every copy of the model is a new graph of the same forward code: allow one per copy, plus one more
    # each for the batch-size check.
    # Dynamo does not guard on a module's hooks by default, so a graph compiled for a copy without a method's
    # hooks would be reused for a copy with them, skipping the hooks: guard on them (set before any compiles).
    limit = (
        torch._dynamo.config.patch(recompile_limit=2 * len(models) + 8, skip_nnmodule_hook_guards=False)
        if compile
        else contextlib.nullcontext()
    )
    with limit, torch.inference_mode():
        for name, model_fn in models.items():
            start = time.perf_counter()
            model_fn(x)
            _synchronize(device)
            first_call[name] = time.perf_counter() - start
            for _ in range(warmup - 1):
                model_fn(x)
        _synchronize(device)
        for _ in range(repeats):
            for name, model_fn in models.items():
                start = time.perf_counter()
                for _ in range(batches_per_repeat):
                    model_fn(x)
                _synchronize(device)
                timings[name].append(batch_size * batches_per_repeat / (time.perf_counter() - start))
        if compile:
            recompiles = {name: _recompiles(timed, other) for name, timed in models.items()}
    unadapted, source = timings[UNADAPTED], timings[("none", "source")]
    results = []
    for name in wanted:
        to_unadapted = _ratios(timings[name], unadapted)
        quartiles = statistics.quantiles(to_unadapted, n=4) if repeats > 1 else [to_unadapted[0]] * 3
        results.append(
            SpeedResult(
                policy=name[1],
                images_per_s=statistics.median(timings[name]),
                ratio_to_source=statistics.median(_ratios(timings[name], source)),
                runs=tuple(timings[name]),
                method=name[0],
                ratio_to_unadapted=statistics.median(to_unadapted),
                spread=(quartiles[0], quartiles[2]),
                unadapted_images_per_s=statistics.median(unadapted),
                compile_s=first_call[name] if compile else None,
                recompiles_on_batch_change=recompiles.get(name),
                unadapted_compile_s=first_call[UNADAPTED] if compile else None,
                unadapted_recompiles=recompiles.get(UNADAPTED),
                other_batch_size=len(other) if compile else None,
            )
        )
    return results
