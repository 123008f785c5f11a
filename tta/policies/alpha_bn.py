"""``alpha_bn``: alpha-BN, a fixed mix of source and batch statistics. See :doc:`/policies/alpha_bn`."""

from __future__ import annotations

from typing import Annotated, Any

from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from tta.options import Range
from tta.policies.base import NormPolicy
from tta.registry import register_policy
from tta.stats import unbiased


@register_policy("alpha_bn")
class AlphaBatchNorm(NormPolicy):
    """Normalize with a fixed mix of the source and the batch statistics; stateless.

    You et al. 2021, "Test-time batch statistics calibration for covariate shift". Rule:
    ``mu = (1-alpha) mu_s + alpha mu_B``, ``var = (1-alpha) var_s + alpha var_B,u``, with the unbiased batch
    variance, as the reference ``AlphaBatchNorm``. With n = 1 the source statistics are used.

    Across processes (a SyncBatchNorm layer, ``NormPolicy`` doc): batch statistics, combined
    over every process's batch (one all-reduce per layer and call).

    Args:
        alpha: Weight of the batch statistics, in [0, 1] (default 0.1): 0 is ``source``, 1 the batch
            statistics alone (with the unbiased variance).

    See :doc:`/policies/alpha_bn`.
    """

    combines_across_processes = True

    def __init__(self, bn: _BatchNorm, *, alpha: Annotated[float, Range(0, 1)] = 0.1, **base: Any) -> None:
        super().__init__(bn, **base)
        self.alpha = alpha

    def normalize(self, x: Tensor) -> Tensor:
        mean_b, var_b, n = self.batch_moments(x, grad=self.grad_through_stats(x))
        if n < 2:
            return self.normalize_with_source(x)
        mean = (1 - self.alpha) * self.source_mean + self.alpha * mean_b
        var = (1 - self.alpha) * self.source_var + self.alpha * unbiased(var_b, n)
        return self.normalize_with(x, mean, var)
