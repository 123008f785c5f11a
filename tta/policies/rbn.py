"""``rbn``: RoTTA's robust batch normalization (spec M6)."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from tta.options import Range
from tta.policies.base import NormPolicy
from tta.registry import register_policy
from tta.stats import all_finite, batch_moments


@register_policy("rbn")
class RobustBatchNorm(NormPolicy):
    """Global statistics updated by an EMA of batch statistics, then used to normalize (spec M6).

    Yuan et al. 2023, "Robust test-time adaptation in dynamic scenarios" (``RobustBN1d/2d``):
    ``mu_g <- (1-alpha) mu_g + alpha mu_B``, ``var_g <- (1-alpha) var_g + alpha var_B`` (biased), starting
    from the source statistics, and the batch is normalized with the updated values. A batch with one
    value per channel (n = 1) updates nothing and is normalized with the current global statistics.
    """

    def __init__(self, bn: _BatchNorm, *, alpha: Annotated[float, Range(0, 1)] = 0.05, **base: object) -> None:
        super().__init__(bn, **base)
        self.alpha = alpha
        self.register_buffer("global_mean", self.source_mean.clone())
        self.register_buffer("global_var", self.source_var.clone())

    def normalize(self, x: Tensor) -> Tensor:
        if self.adapting:
            mean_b, var_b, n = batch_moments(x, self.stats_dtype)
            if n >= 2:
                ok = all_finite(mean_b, var_b)
                self.commit(
                    ok,
                    global_mean=torch.lerp(self.global_mean, mean_b, self.alpha),
                    global_var=torch.lerp(self.global_var, var_b, self.alpha),
                )
        return self.normalize_with(x, self.global_mean, self.global_var)

    def reset(self) -> None:
        self.global_mean.copy_(self.source_mean)
        self.global_var.copy_(self.source_var)

    def adapted_stats(self) -> tuple[Tensor, Tensor]:
        return self.global_mean, self.global_var

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}"
