"""``iabn``: NOTE's instance-aware batch normalization, at test time on a BatchNorm model.

See :doc:`/policies/iabn`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from tta.options import Choice, Range
from tta.policies.base import NormPolicy, source_mean, source_var
from tta.registry import register_policy
from tta.stats import all_finite, instance_moments, normalize_per_instance, unbiased


def softshrink(x: Tensor, threshold: Tensor) -> Tensor:
    """``sign(x) max(|x| - threshold, 0)`` with a tensor threshold (``F.softshrink`` takes a scalar)."""
    return x - torch.minimum(torch.maximum(x, -threshold), threshold)


@register_policy("iabn")
class InstanceAwareBatchNorm(NormPolicy):
    """Each instance normalized by its own statistics, soft-shrunk towards the layer statistics.

    Gong et al. NeurIPS 2022, "NOTE: robust continual test-time adaptation against temporal correlation"
    (official ``TaesikGong/NOTE``, ``utils/iabn.py``). With layer statistics ``(mu_b, var_b)``, instance
    statistics ``(mu_i, var_i)`` over the ``L`` spatial elements (unbiased variance, as the official
    code), ``s_mu = sqrt((var_b + eps) / L)`` and ``s_var = (var_b + eps) sqrt(2 / (L - 1))``:
    ``mu = mu_b + softshrink(mu_i - mu_b, k s_mu)``, ``var = relu(var_b + softshrink(var_i - var_b, k s_var))``.
    ``k = 4`` as NOTE's ``tta.sh``. With ``L <= 1`` (BatchNorm1d on ``(B, C)`` included) ``(mu_b, var_b)``
    normalize, as the official ``skip_thres = 1``.

    ``stats`` chooses the layer statistics. ``"running"`` (default) is NOTE's test-time setting: a
    running estimate that starts at the source statistics and, after each batch is normalized with it,
    moves by PyTorch's EMA: ``mu_r <- (1-m) mu_r + m mu_B``, ``var_r <- (1-m) var_r + m var_B,u``
    (unbiased, as PyTorch's running update), ``m = momentum``. ``"source"``: the frozen source
    statistics, stateless. The running estimate is updated from the incoming batch, where NOTE updates
    it from its class-balanced memory every 64 samples, and a batch with one value per channel updates
    nothing. Under a gradient method (``stats_grad``) the gradient flows through the instance
    statistics, as in the official layer; otherwise they carry none.

    Across processes (a SyncBatchNorm layer, ``NormPolicy`` doc): the instance statistics are
    each instance's own and need no reduction; the running estimate's update uses batch statistics,
    combined over every process's batch (one all-reduce per layer and call; none with ``"source"``).

    Args:
        k: Width of the shrinkage band in standard errors, ``>= 0`` (default 4, NOTE's): an instance
            statistic within ``k`` standard errors of the layer statistic is replaced by it; 0 is
            instance normalization.
        stats: The layer statistics the instances shrink towards: ``"running"`` (default, the running
            estimate) or ``"source"`` (the source statistics, no state).
        momentum: ``m``, the running estimate's EMA momentum, in [0, 1] (default 0.01, NOTE's
            ``bn_momentum``); unused with ``stats="source"``.

    See :doc:`/policies/iabn` (the departures from the official code).
    """

    running_mean: Tensor
    running_var: Tensor
    combines_across_processes = True

    def __init__(
        self,
        bn: _BatchNorm,
        *,
        k: Annotated[float, Range(0)] = 4.0,
        stats: Annotated[str, Choice("running", "source")] = "running",
        momentum: Annotated[float, Range(0, 1)] = 0.01,
        **base: Any,
    ) -> None:
        super().__init__(bn, **base)
        self.k, self.stats, self.momentum = k, stats, momentum
        if stats == "running":
            self.add_state("running_mean", source_mean)
            self.add_state("running_var", source_var)

    def layer_stats(self) -> tuple[Tensor, Tensor]:
        """``(mu_b, var_b)``: the running estimate or the source statistics, per ``stats``."""
        if self.stats == "running":
            return self.running_mean, self.running_var
        return self.source_mean, self.source_var

    def normalize(self, x: Tensor) -> Tensor:
        mean_b, var_b = self.layer_stats()
        length = x[0, 0].numel()
        if length <= 1:
            out = self.normalize_with(x, mean_b, var_b)
        else:
            mean_i, var_i = instance_moments(x, self.stats_dtype, grad=self.grad_through_stats(x))  # (B, C), biased
            var_i = unbiased(var_i, length)
            scale = var_b + self.eps
            mean = mean_b + softshrink(mean_i - mean_b, self.k * torch.sqrt(scale / length))
            var = torch.relu(var_b + softshrink(var_i - var_b, self.k * scale * math.sqrt(2 / (length - 1))))
            out = normalize_per_instance(x, mean, var, *self.affine(), self.eps)
        if self.adapting and self.stats == "running":
            self.update_running(x)
        return out

    def update_running(self, x: Tensor) -> None:
        """PyTorch BatchNorm's running update with momentum ``m`` (unbiased batch variance)."""
        batch_mean, batch_var, n = self.batch_moments(x)
        if n >= 2:
            ok = all_finite(batch_mean, batch_var)
            self.commit(
                ok,
                running_mean=torch.lerp(self.running_mean, batch_mean, self.momentum),
                running_var=torch.lerp(self.running_var, unbiased(batch_var, n), self.momentum),
            )

    def adapted_stats(self) -> tuple[Tensor, Tensor] | None:
        """The running estimate; None with ``stats="source"`` (nothing adapts)."""
        return (self.running_mean, self.running_var) if self.stats == "running" else None
