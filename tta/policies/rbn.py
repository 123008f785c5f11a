"""``rbn``: RoTTA's robust batch normalization (spec M6)."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from tta.options import Range
from tta.policies.base import NormPolicy, source_mean, source_var
from tta.registry import register_policy
from tta.stats import all_finite, select


@register_policy("rbn")
class RobustBatchNorm(NormPolicy):
    """Global statistics updated by an EMA of batch statistics, then used to normalize (spec M6).

    Yuan et al. 2023, "Robust test-time adaptation in dynamic scenarios" (``RobustBN1d/2d``):
    ``mu_g <- (1-alpha) mu_g + alpha mu_B``, ``var_g <- (1-alpha) var_g + alpha var_B`` (biased), starting
    from the source statistics, and the batch is normalized with the updated values. A batch with one
    value per channel (n = 1) updates nothing and is normalized with the current global statistics.

    Across processes (a SyncBatchNorm layer, ``NormPolicy`` doc, issue 13): batch statistics, combined
    over every process's batch (one all-reduce per layer and call).
    """

    def __init__(self, bn: _BatchNorm, *, alpha: Annotated[float, Range(0, 1)] = 0.05, **base: object) -> None:
        super().__init__(bn, **base)
        self.alpha = alpha
        self.add_state("global_mean", source_mean)
        self.add_state("global_var", source_var)

    def normalize(self, x: Tensor) -> Tensor:
        mean, var = self.global_mean, self.global_var
        if self.adapting:
            grad = self.grad_through_stats(x)
            mean_b, var_b, n = self.batch_moments(x, grad=grad)
            if n >= 2:
                ok = all_finite(mean_b, var_b)
                new_mean = torch.lerp(self.global_mean, mean_b, self.alpha)
                new_var = torch.lerp(self.global_var, var_b, self.alpha)
                if grad:  # the batch term keeps its gradient, as in the official RobustBN
                    mean, var = select(ok, new_mean, mean), select(ok, new_var, var)
                self.commit(ok, global_mean=new_mean, global_var=new_var)
        return self.normalize_with(x, mean, var)

    def adapted_stats(self) -> tuple[Tensor, Tensor]:
        return self.global_mean, self.global_var
