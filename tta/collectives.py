"""Collectives for the policies that combine their statistics across processes: sums, gathers and pooled
moments over a process group (``NormPolicy`` doc)."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor


def sum_across_processes(values: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Element-wise sum of ``values`` over the processes of ``group`` (None: the default group), a new tensor.

    Every process of the group must call it, in the same order. When ``values`` carries a gradient the
    sum is autograd's all-reduce, whose backward sums the gradients over the processes in turn (as
    SyncBatchNorm's backward does), so each process's loss reaches every process's inputs.
    """
    if torch.is_grad_enabled() and values.requires_grad:
        from torch.distributed.nn.functional import all_reduce

        # Deprecated in recent torch (2.14 warns) for _functional_collectives.all_reduce, which has a
        # gradient only in recent releases (pytorch#168140); this project supports torch >= 2.6.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return all_reduce(values, group=dist.group.WORLD if group is None else group)
    values = values.clone()
    dist.all_reduce(values, group=group)
    return values


def gather_rows(rows: Tensor, group: dist.ProcessGroup | None = None) -> tuple[Tensor, int]:
    """Every process's ``rows`` of ``group`` (None: the default group) in rank order, and the index where this
    process's own start; processes may hold different counts (padded for the exchange).

    Every process of the group must call it, in the same order. When ``rows`` carries a gradient the gather is
    autograd's, whose backward returns each process the gradient of its rows summed over the processes.
    """
    world = dist.get_world_size(group)
    count = torch.tensor([len(rows)], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    sizes = [int(c) for c in counts]
    padded = torch.cat([rows, rows.new_zeros((max(sizes) - len(rows), *rows.shape[1:]))])
    if torch.is_grad_enabled() and rows.requires_grad:
        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():  # deprecated as all_reduce is (sum_across_processes)
            warnings.simplefilter("ignore", FutureWarning)
            parts = all_gather(padded, group=dist.group.WORLD if group is None else group)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=group)
    rank = dist.get_rank(group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]), sum(sizes[:rank])


def reduce_moments(
    mean: Tensor, var: Tensor, n: int, group: dist.ProcessGroup | None = None
) -> tuple[Tensor, Tensor, int]:
    """Per-channel mean, biased variance and count of every process's batch together, from each one's own.

    One all-reduce of the stacked (count, sum, sum of squares) per call (processes may hold
    different counts), in float64: the cancellation in ``E[x^2] - E[x]^2`` then costs less than float32
    rounding while ``|mean| / std`` stays below about 1e4. Results in ``mean``'s dtype; the count is read
    on the host (one synchronization per call on an accelerator). Differentiable in ``mean`` and ``var``
    (:func:`sum_across_processes`). SyncBatchNorm instead all-gathers each process's (mean, 1/std, count)
    and merges them; the sums make one message whose size does not grow with the number of processes.
    """
    channels = mean.shape[0]
    mean64, var64 = mean.double(), var.double()
    count = torch.full((1,), float(n), dtype=torch.float64, device=mean.device)
    total = sum_across_processes(torch.cat([count, mean64 * n, (var64 + mean64.square()) * n]), group)
    pooled_mean = total[1 : 1 + channels] / total[0]
    pooled_var = (total[1 + channels :] / total[0] - pooled_mean.square()).clamp_min(0)
    return pooled_mean.to(mean.dtype), pooled_var.to(mean.dtype), int(total[0])
