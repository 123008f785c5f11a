"""``adabn``: AdaBN, the exact statistics of the whole target stream. See :doc:`/policies/adabn`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from tta.policies.base import filled
from tta.policies.running import RunningStatsPolicy, State
from tta.registry import register_policy
from tta.stats import at_least, host_int, merge_moments, select


@register_policy("adabn")
class AdaBatchNorm(RunningStatsPolicy):
    """Normalize with the pooled mean and biased variance of every target value seen since attach/reset.

    Li et al. 2016, "Revisiting batch normalization for practical domain adaptation". Rule: per channel
    the count, mean and sum of squared deviations of every value seen; each batch is merged with Chan et
    al.'s exact parallel update (:func:`tta.stats.merge_moments`), then normalized with the merged mean
    and biased variance. After batches ``b1..bt`` the state equals the moments of their concatenation
    (the usual implementation averages batch variances and drops the between-batch term). The state is
    kept in float64 (count in int64) so long streams lose nothing. Until the pool holds two values per
    channel the source statistics normalize. A batch with one value per channel (n = 1) updates
    nothing, as for every stateful policy: it has no variance of its own.

    No options; :func:`tta.reset` empties the pool (at a change of domain). See :doc:`/policies/adabn`.
    """

    count: Tensor
    target_mean: Tensor
    target_m2: Tensor

    def __init__(self, bn: _BatchNorm, **base: Any) -> None:
        super().__init__(bn, **base)
        self.add_state("count", filled((), 0, torch.int64))
        self.add_state("target_mean", filled((self.num_features,), 0, torch.float64))
        self.add_state("target_m2", filled((self.num_features,), 0, torch.float64))

    def update(self, mean: Tensor, var: Tensor, n: int) -> dict[str, Tensor | int]:
        count, target_mean, target_m2 = merge_moments(
            host_int(self.count), self.target_mean, self.target_m2, n, mean, var
        )
        return {"count": count, "target_mean": target_mean, "target_m2": target_m2}

    def statistics(self, state: State) -> tuple[Tensor, Tensor]:
        """The pool's mean and biased variance in the statistics dtype (an empty pool counts as one value)."""
        var = state["target_m2"] / at_least(state["count"], 1)
        return state["target_mean"].to(self.stats_dtype), var.to(self.stats_dtype)

    def normalizing_stats(self) -> tuple[Tensor, Tensor]:
        """The pool's statistics once it holds two values per channel, the source statistics before."""
        pooled = host_int(self.count) >= 2
        mean, var = self.adapted_stats()
        return select(pooled, mean, self.source_mean), select(pooled, var, self.source_var)
