"""``adabn``: AdaBN, exact statistics of the whole target stream (spec M3)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from tta.policies.base import filled
from tta.policies.running import RunningStatsPolicy, State
from tta.registry import register_policy
from tta.stats import merge_moments, on_host


@register_policy("adabn")
class AdaBatchNorm(RunningStatsPolicy):
    """Normalize with the pooled mean and biased variance of every target value seen since attach/reset.

    Li et al. 2016, "Revisiting batch normalization for practical domain adaptation" (spec M3). Each
    batch is merged with Chan et al.'s exact parallel update, then normalized with the merged state.
    Departure from the reference code on purpose: it averages batch variances and drops the
    between-batch term; ours equals the moments of the concatenated stream. The state is kept in
    float64 (count in int64) so long streams lose nothing. Until the pool holds two values per channel
    the source statistics normalize. A batch with one value per channel (n = 1) updates nothing, as
    for every stateful policy: it has no variance of its own, and a pool built from such batches
    would normalize with the variance of the first two values seen.
    """

    count: Tensor
    target_mean: Tensor
    target_m2: Tensor

    def __init__(self, bn: _BatchNorm, **base: object) -> None:
        super().__init__(bn, **base)
        self.add_state("count", filled((), 0, torch.int64))
        self.add_state("target_mean", filled((self.num_features,), 0, torch.float64))
        self.add_state("target_m2", filled((self.num_features,), 0, torch.float64))

    def update(self, mean: Tensor, var: Tensor, n: int) -> dict[str, Tensor | int]:
        count = int(self.count) if on_host(self.count) else self.count  # a Python int: fewer kernels
        count, target_mean, target_m2 = merge_moments(count, self.target_mean, self.target_m2, n, mean, var)
        return {"count": count, "target_mean": target_mean, "target_m2": target_m2}

    def statistics(self, state: State) -> tuple[Tensor, Tensor]:
        """The pool's mean and biased variance in the statistics dtype (an empty pool counts as one value)."""
        count = state["count"]
        if not isinstance(count, Tensor):
            count = max(count, 1)
        elif on_host(count):
            count = max(int(count), 1)
        else:
            count = count.clamp(min=1)
        var = state["target_m2"] / count
        return state["target_mean"].to(self.stats_dtype), var.to(self.stats_dtype)

    def normalizing_stats(self) -> tuple[Tensor, Tensor]:
        """The pool's statistics once it holds two values per channel, the source statistics before."""
        if on_host(self.count):  # reading the count is free here
            return self.adapted_stats() if int(self.count) >= 2 else (self.source_mean, self.source_var)
        pooled = self.count >= 2  # torch.where: no host sync on an accelerator
        mean, var = self.adapted_stats()
        return torch.where(pooled, mean, self.source_mean), torch.where(pooled, var, self.source_var)
