"""``rbn``: RoTTA's robust batch normalization, an EMA of batch statistics. See :doc:`/policies/rbn`."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from tta.options import Range
from tta.policies.base import source_mean, source_var
from tta.policies.running import RunningStatsPolicy, State
from tta.registry import register_policy


@register_policy("rbn")
class RobustBatchNorm(RunningStatsPolicy):
    """Global statistics updated by an EMA of batch statistics, then used to normalize.

    Yuan et al. CVPR 2023, "Robust test-time adaptation in dynamic scenarios" (RoTTA; official
    ``BIT-DA/RoTTA``, ``core/utils/bn_layers.py``, ``RobustBN1d/2d``). Rule:
    ``mu_g <- (1-alpha) mu_g + alpha mu_B``, ``var_g <- (1-alpha) var_g + alpha var_B`` (biased), starting
    from the source statistics, and the batch is normalized with the updated values. A batch with one
    value per channel (n = 1) updates nothing and is normalized with the current global statistics. In
    RoTTA the layer is refreshed from a class-balanced memory, not the raw stream: the method ``rotta``
    (:doc:`/methods/rotta`) stacked on this policy.

    Args:
        alpha: Momentum of the EMA, the weight of each batch, in [0, 1] (default 0.05, RoTTA's): 0 is
            ``source``, 1 is ``tbn``.

    See :doc:`/policies/rbn`.
    """

    global_mean: Tensor
    global_var: Tensor

    def __init__(self, bn: _BatchNorm, *, alpha: Annotated[float, Range(0, 1)] = 0.05, **base: Any) -> None:
        super().__init__(bn, **base)
        self.alpha = alpha
        self.add_state("global_mean", source_mean)
        self.add_state("global_var", source_var)

    def update(self, mean: Tensor, var: Tensor, n: int) -> dict[str, Tensor | int]:
        return {
            "global_mean": torch.lerp(self.global_mean, mean, self.alpha),
            "global_var": torch.lerp(self.global_var, var, self.alpha),
        }

    def statistics(self, state: State) -> tuple[Tensor, Tensor]:
        return state["global_mean"], state["global_var"]
