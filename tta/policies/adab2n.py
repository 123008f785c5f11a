"""``adab2n``: AdaB²N's adaptive balance of the running statistics' momentum. See :doc:`/policies/adab2n`."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from tta.options import Range
from tta.policies.base import filled, source_mean, source_var
from tta.policies.running import RunningStatsPolicy, State
from tta.registry import register_policy


@register_policy("adab2n")
class AdaptiveBalanceBatchNorm(RunningStatsPolicy):
    """Running statistics updated with AdaB²N's momentum ``eta_t``, then used to normalize.

    Lyu et al. NeurIPS 2023, "Overcoming recency bias of normalization statistics in continual learning:
    balance and adaptation" (official ``lvyilin/AdaB2N``, ``models/utils/adab2n.py``). The running state
    starts at the source statistics; on the t-th adapting forward ``mu_r <- mu_r + eta_t (mu_B - mu_r)``,
    ``var_r <- (1 - eta_t) var_r + eta_t var_B`` with the **biased** batch variance (``correction=0``, as
    the official code), and the batch is normalized with the updated state. ``eta_1 = m^kappa``,
    ``eta_t = eta_{t-1} / (eta_{t-1} + (1 - m)^kappa)``: ``kappa = 1`` is a plain EMA with momentum ``m``,
    ``kappa = 0`` the cumulative mean (``eta_t = 1/t``). The official code's task-wise weighting of
    samples needs task labels and training and is left out: each batch weighs the same. ``t`` and
    ``eta_t`` are buffers (``reset``, ``state_dict``). A batch with one value per channel (n = 1) updates
    nothing, as for every stateful policy.

    Args:
        momentum: ``m``, in [0, 1], or None (default): the layer's BN momentum (0.1 where that is None,
            PyTorch's cumulative average, which the official code refuses).
        kappa: The balance between an EMA and the cumulative mean, in [0, 1] (default 0.4, chosen on
            Fashion-MNIST-C from the paper's grid {0.1, 0.4, 0.7, 1.0}): 1 is an EMA with momentum ``m``,
            0 the mean of every batch seen (``eta_t = 1/t``).

    See :doc:`/policies/adab2n` (the departures from the official code, and how ``kappa`` was chosen).
    """

    step: Tensor
    eta: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(
        self,
        bn: _BatchNorm,
        *,
        momentum: Annotated[float | None, Range(0, 1)] = None,
        kappa: Annotated[float, Range(0, 1)] = 0.4,
        **base: Any,
    ) -> None:
        super().__init__(bn, **base)
        self.momentum = self.bn_momentum if momentum is None else momentum
        self.kappa = kappa
        self.add_state("step", filled((), 0, torch.int64))
        self.add_state("eta", filled((), 0, torch.float64))  # eta of the last update
        self.add_state("running_mean", source_mean)
        self.add_state("running_var", source_var)

    def next_eta(self, step: Tensor) -> Tensor:
        """``eta_t`` for the t-th update (``step = t``), from ``eta_{t-1}`` held in the buffer."""
        m, kappa = self.momentum, self.kappa
        if kappa == 0.0:
            return 1.0 / step.double()
        if kappa == 1.0:
            return torch.full_like(self.eta, m)
        first = torch.full_like(self.eta, m**kappa)
        return torch.where(step == 1, first, self.eta / (self.eta + (1 - m) ** kappa))

    def update(self, mean: Tensor, var: Tensor, n: int) -> dict[str, Tensor | int]:
        step = self.step + 1
        eta = self.next_eta(step)
        rate = eta.to(self.stats_dtype)
        return {
            "step": step,
            "eta": eta,
            "running_mean": torch.lerp(self.running_mean, mean, rate),
            "running_var": torch.lerp(self.running_var, var, rate),
        }

    def statistics(self, state: State) -> tuple[Tensor, Tensor]:
        return state["running_mean"], state["running_var"]
