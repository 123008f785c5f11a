"""``adabn``: AdaBN, exact statistics of the whole target stream (spec M3)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from tta.policies.base import NormPolicy, filled
from tta.registry import register_policy
from tta.stats import all_finite, merge_moments, on_host, select


@register_policy("adabn")
class AdaBatchNorm(NormPolicy):
    """Normalize with the pooled mean and biased variance of every target value seen since attach/reset.

    Li et al. 2016, "Revisiting batch normalization for practical domain adaptation" (spec M3). Each
    batch is merged with Chan et al.'s exact parallel update, then normalized with the merged state.
    Departure from the reference code on purpose: it averages batch variances and drops the
    between-batch term; ours equals the moments of the concatenated stream. The state is kept in
    float64 (count in int64) so long streams lose nothing. Until the pool holds two values per channel
    the source statistics normalize. A batch with one value per channel (n = 1) updates nothing, as
    for every stateful policy: it has no variance of its own, and a pool built from such batches
    would normalize with the variance of the first two values seen.

    Across processes (a SyncBatchNorm layer, ``NormPolicy`` doc, issue 13): batch statistics, combined
    over every process's batch (one all-reduce per layer and call).
    """

    def __init__(self, bn: _BatchNorm, **base: object) -> None:
        super().__init__(bn, **base)
        self.add_state("count", filled((), 0, torch.int64))
        self.add_state("target_mean", filled((self.num_features,), 0, torch.float64))
        self.add_state("target_m2", filled((self.num_features,), 0, torch.float64))

    def normalize(self, x: Tensor) -> Tensor:
        fresh = None
        if self.adapting:
            grad = self.grad_through_stats(x)
            mean_b, var_b, n = self.batch_moments(x, grad=grad)
            if n >= 2:
                ok = all_finite(mean_b, var_b)
                count = int(self.count) if on_host(self.count) else self.count  # a Python int: fewer kernels
                count, mean, m2 = merge_moments(count, self.target_mean, self.target_m2, n, mean_b, var_b)
                self.commit(ok, count=count, target_mean=mean, target_m2=m2)
                if grad:  # the pool, with this batch's share keeping its gradient
                    fresh = ok, mean.to(self.stats_dtype), (m2 / count).to(self.stats_dtype)
        if on_host(self.count):  # reading the count is free here
            mean, var = self.adapted_stats() if int(self.count) >= 2 else (self.source_mean, self.source_var)
        else:  # torch.where: no host sync on an accelerator
            pooled = self.count >= 2
            mean, var = self.adapted_stats()
            mean = torch.where(pooled, mean, self.source_mean)
            var = torch.where(pooled, var, self.source_var)
        if fresh is not None:
            ok, new_mean, new_var = fresh
            mean, var = select(ok, new_mean, mean), select(ok, new_var, var)
        return self.normalize_with(x, mean, var)

    def adapted_stats(self) -> tuple[Tensor, Tensor]:
        count = max(int(self.count), 1) if on_host(self.count) else self.count.clamp(min=1)
        var = self.target_m2 / count
        return self.target_mean.to(self.stats_dtype), var.to(self.stats_dtype)
