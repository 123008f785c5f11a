"""``unmix_tns``: UnMix-TNS, K statistics components mixed per instance."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from tta.collectives import sum_across_processes
from tta.options import Range
from tta.policies.base import NormPolicy
from tta.registry import register_policy
from tta.stats import all_finite, instance_moments, normalize_per_instance


def initial_component_mean(layer: UnMixTNS) -> Tensor:
    """A copy of the components' means as drawn at attach (:data:`tta.policies.base.StateInit`)."""
    return layer.initial_component_mean.clone()


def initial_component_var(layer: UnMixTNS) -> Tensor:
    """A copy of the components' variances as drawn at attach."""
    return layer.initial_component_var.clone()


@register_policy("unmix_tns")
class UnMixTNS(NormPolicy):
    """K components of (mean, variance) per layer; each instance is normalized by a mixture of them.

    Tomar et al. 2024, "Un-mixing test-time normalization statistics" (ICLR; official code
    ``devavratTomar/unmixtns``). Per instance b with statistics over its spatial dims: assignment
    ``p_bk = softmax_k(cos(mu_b, mu_k) / temperature)``, mixed components ``(1 - p_bk) comp_k + p_bk inst_b``,
    whose mixture mean and variance (within- plus between-component terms) normalize b; then the components
    move towards the instances assigned to them at rate ``M = 1 - (1 - m)^(B / batch_size_max)``, ``m`` the
    layer's BatchNorm momentum and ``B`` the batch size of the call. Inputs without spatial extent
    (BatchNorm1d on ``(B, C)``, or one spatial element) are normalized with the source statistics and
    update nothing. Across processes (a SyncBatchNorm layer) the component update is a mean over every
    process's instances (one all-reduce), so the components stay equal on every process.

    The rule with its equations and the departures from the official code: :doc:`/policies/unmix_tns`.

    Args:
        num_components: the number of components K per layer (the paper uses 16, and 128 for mixed
            domains); with 1, the one component starts at the source statistics.
        temperature: the softmax temperature of the assignment by cosine similarity; lower assigns each
            instance more sharply to its nearest component.
        init_spread: the share ``a`` of the source variance moved into the spread of the initial
            components' means: ``mu_k = mu_s + sqrt(a K / (K - 1)) sigma_s eps_k``,
            ``var_k = (1 - a) var_s``, so their equal-weight mixture has the source variance.
        batch_size_max: the batch size at which the update rate is the layer's BatchNorm momentum; a batch
            of ``B`` uses ``1 - (1 - m)^(B / batch_size_max)``.
        seed: seeds the draw of the initial components (with the layer's index), on the CPU: attaching twice
            with one seed gives identical components on any device, and ``reset`` restores that draw.
    """

    initial_component_mean: Tensor
    initial_component_var: Tensor
    component_mean: Tensor
    component_var: Tensor
    combines_across_processes = True

    def __init__(
        self,
        bn: _BatchNorm,
        *,
        num_components: Annotated[int, Range(1)] = 16,
        temperature: Annotated[float, Range(0, low_open=True)] = 0.07,
        init_spread: Annotated[float, Range(0, 1, high_open=True)] = 0.5,
        batch_size_max: Annotated[int, Range(1)] = 64,
        seed: Annotated[int, Range(0)] = 0,
        **base: Any,
    ) -> None:
        super().__init__(bn, **base)
        self.num_components, self.temperature = num_components, temperature
        self.init_spread, self.batch_size_max, self.seed = init_spread, batch_size_max, seed
        initial_mean, initial_var = self.draw_components()
        self.register_buffer("initial_component_mean", initial_mean)
        self.register_buffer("initial_component_var", initial_var)
        self.add_state("component_mean", initial_component_mean)
        self.add_state("component_var", initial_component_var)

    def draw_components(self) -> tuple[Tensor, Tensor]:
        """Initial components ``(K, C)`` around the source statistics (``init_spread``, class doc)."""
        k, a = self.num_components, self.init_spread
        mean_s, var_s = self.source_mean.cpu(), self.source_var.cpu()
        if k == 1:
            mean, var = mean_s[None].clone(), var_s[None].clone()
        else:
            layer_seed = int(np.random.SeedSequence([self.seed, self.layer_index]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(layer_seed)
            noise = torch.randn(k, self.num_features, generator=generator)
            mean = mean_s + (a * k / (k - 1)) ** 0.5 * var_s.sqrt() * noise
            var = ((1 - a) * var_s).expand(k, -1).clone()
        return mean.to(self.source_mean.device), var.to(self.source_mean.device)

    def normalize(self, x: Tensor) -> Tensor:
        if x.dim() < 3 or x[0, 0].numel() < 2:
            return self.normalize_with_source(x)
        inst_mean, inst_var = instance_moments(x, self.stats_dtype, grad=self.grad_through_stats(x))  # (B, C)
        p, mean, var = self.mixture_statistics(inst_mean, inst_var)
        # 4. normalize with the components before this batch's update
        out = normalize_per_instance(x, mean, var, *self.affine(), self.eps)
        if self.adapting:
            self.update_components(p, inst_mean, inst_var)
        return out

    def mixture_statistics(self, inst_mean: Tensor, inst_var: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Assignments ``p`` (B, K) and each instance's mixture mean and variance (B, C).

        The mixed components ``(1 - p_bk) comp_k + p_bk inst_b`` are never materialized as (B, K, C):
        their means over k expand into (B, K) x (K, C) products, and the variance is
        ``mean_k var + mean_k mean^2 - (mean_k mean)^2`` (clamped at zero against rounding).
        """
        comp_mean, comp_var = self.component_mean, self.component_var  # (K, C)
        k = comp_mean.shape[0]
        # 1. soft assignment of each instance to the components by cosine similarity of means
        cosine = F.normalize(inst_mean.detach(), dim=1) @ F.normalize(comp_mean, dim=1).T  # no gradient
        p = torch.softmax(cosine / self.temperature, dim=1)
        q = 1 - p
        p_mean = p.mean(dim=1, keepdim=True)  # (B, 1)
        # 2.-3. mean_k of the mixed means, mixed variances and squared mixed means
        mean = (q @ comp_mean) / k + p_mean * inst_mean
        within = (q @ comp_var) / k + p_mean * inst_var
        mean_sq = (
            (q.square() @ comp_mean.square()) / k
            + 2 * inst_mean * ((p * q) @ comp_mean) / k
            + p.square().mean(dim=1, keepdim=True) * inst_mean.square()
        )
        return p, mean, within + (mean_sq - mean.square()).clamp_min(0)

    def update_components(self, p: Tensor, inst_mean: Tensor, inst_var: Tensor) -> None:
        """``comp_k <- comp_k + M mean_b[p_bk (inst_b - comp_k)]`` for means and variances."""
        batch = p.shape[0]
        weight_sum = p.mean(dim=0)[:, None]  # (K, 1): mean_b p_bk
        assigned_mean = p.T @ inst_mean / batch  # (K, C): mean_b p_bk mu_b
        assigned_var = p.T @ inst_var / batch
        if self.sync_batchnorm and self.syncing():
            batch, (weight_sum, assigned_mean, assigned_var) = self.mean_over_processes(
                batch, weight_sum, assigned_mean, assigned_var
            )
        rate = 1 - (1 - self.bn_momentum) ** (batch / self.batch_size_max)
        new_mean = self.component_mean + rate * (assigned_mean - weight_sum * self.component_mean)
        new_var = self.component_var + rate * (assigned_var - weight_sum * self.component_var)
        ok = all_finite(new_mean, new_var)
        self.commit(ok, component_mean=new_mean, component_var=new_var)

    def mean_over_processes(self, batch: int, *means: Tensor) -> tuple[int, list[Tensor]]:
        """The number of instances of every process together and ``means``, each a mean over the
        instances of this process, as means over all of them: one all-reduce, in float64."""
        count = torch.full((1,), float(batch), dtype=torch.float64, device=means[0].device)
        sums = torch.cat([count, *(batch * m.detach().double().flatten() for m in means)])  # no gradient
        total = sum_across_processes(sums, self.process_group)
        pooled = (total[1:] / total[0]).split([m.numel() for m in means])
        return int(total[0]), [new.view_as(m).to(m.dtype) for new, m in zip(pooled, means)]

    def adapted_stats(self) -> tuple[Tensor, Tensor]:
        """The components' pooled mean and variance (equal weights), per channel."""
        between_var, mean = torch.var_mean(self.component_mean, dim=0, correction=0)
        return mean, self.component_var.mean(dim=0) + between_var
