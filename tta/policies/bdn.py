"""``bdn``: UniTTA's balanced domain normalization, per-(domain, class) statistics with the domain predicted
per sample. See :doc:`/policies/bdn`."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta.options import Range
from tta.policies.balanced import BalancedBatchNorm
from tta.policies.base import ModelHook, check_logits
from tta.registry import register_policy
from tta.stats import all_finite, instance_moments, normalize_per_instance
from tta.surgery import is_batchnorm, with_num_classes

INITIAL_DOMAINS = 2
"""The official dynamic mode's start: two domains at the source statistics (the second kept fresh)."""


def default_domain_layer(num_layers: int) -> int:
    """The layer that predicts the domain when none is named: the one at 2/5 of the depth, ``(2 n) // 5``.
    The official configurations name the first BatchNorm of the network's middle stage: WRN-28-10's
    ``block2.layer.0.bn1`` (8 of 25), ResNeXt-29's ``stage_2.0.bn`` (12 of 31), ResNet-50's
    ``layer3.0.bn1`` (24 of 53); 2/5 gives 10, 12 and 21."""
    return (2 * num_layers) // 5


def _slot_source_mean(layer: BalancedDomainNorm) -> Tensor:
    return layer.source_mean.expand(layer.slots, layer.num_classes, -1).clone()


def _slot_source_var(layer: BalancedDomainNorm) -> Tensor:
    return layer.source_var.expand(layer.slots, layer.num_classes, -1).clone()


def _zero_counts(layer: BalancedDomainNorm) -> Tensor:
    return torch.zeros(layer.slots, dtype=torch.int64, device=layer.source_mean.device)


def _initial_active(layer: BalancedDomainNorm) -> Tensor:
    return torch.tensor(INITIAL_DOMAINS, dtype=torch.int64, device=layer.source_mean.device)


def wasserstein_distances(mean: Tensor, var: Tensor, domain_mean: Tensor, domain_var: Tensor) -> Tensor:
    """``(B, D)`` squared 2-Wasserstein distances between per-channel Gaussians, summed over channels:
    ``sum_c (m_bc - m_dc)^2 + (s_bc - s_dc)^2`` with ``s`` the standard deviations (the official ``w2``)."""
    m, v = mean[:, None], var[:, None]
    dm, dv = domain_mean[None], domain_var[None]
    return ((m - dm).square() + v + dv - 2 * v.sqrt() * dv.sqrt()).sum(2)


@register_policy("bdn")
class BalancedDomainNorm(BalancedBatchNorm):
    """Per-(domain, class) statistics; each sample normalized with its predicted domain's class-balanced ones.

    Du et al. 2024, "Unified benchmark and versatile framework towards realistic test-time adaptation"
    (UniTTA; official ``LeapLabTHU/UniTTA``, ``core/utils/bdn.py``, ``core/adapter/unitta_bdn.py`` in its
    ``dynamic`` mode, the one every official configuration runs). Each layer holds, for every domain ``d``
    and class ``k``, statistics ``(mu_dk, var_dk)`` starting at the source ones, and a domain's statistics
    are their class-balanced mixture: ``mu_d = mean_k mu_dk``, ``var_d = mean_k var_dk + var_k(mu_dk)``.
    Inside the layer TRIBE's balanced normalization (:doc:`/policies/balanced`, with coupling ``gamma``)
    serves the passes that do not know the domain.

    An adapting call is three forwards of the batch, run by a forward hook on the model: (1) the model's
    own forward with the balanced statistics and no update, whose argmax labels the batch; (2) the balanced
    statistics updated with those labels and normalizing, while one layer (``domain_layer``) assigns each
    sample the domain whose statistics are nearest to its own (mean and variance over its spatial
    positions, squared 2-Wasserstein distance summed over channels); (3) in every layer, each sample's
    (domain, class) statistics move towards it with the per-sample step ``eta`` (at most weight 1 for a
    group, as TRIBE's), and each sample is normalized with its domain's statistics. The output is the
    third forward's logits, except for the samples where the second was at least as confident
    (``confidence_filter``). The domains grow: there are two at first, and whenever a sample is assigned the
    last one (still at the source statistics until then) a new one is added, up to ``max_domains``. While
    paused: the model's forward (its domains predicted there) and the per-domain forward, filtered, with
    no update.

    Args:
        num_classes: the number of classes K (at least 2); None reads it from the output size of the
            model's last ``nn.Linear`` at attach.
        eta: the per-sample step of both the balanced and the per-(domain, class) statistics. None takes the
            official configs' ``max(0.0005 K, 0.01)`` (0.01, 0.05, 0.5 for 10, 100, 1000 classes).
        gamma: the class coupling of the balanced statistics (:doc:`/policies/balanced`); the official
            ``unitta_bdn`` fixes it at 0.
        max_domains: the most domains a layer holds (at least 2); memory is ``2 max_domains K C`` values
            per layer of C channels. The official default is 64 (32 with pruning on ImageNet).
        prune: when a new domain is needed and ``max_domains`` are held, first remove the least used of the
            older half (the official ``PRUNE``, on for ImageNet); off, no domain is added past ``max_domains``.
        domain_layer: the position, among the model's BatchNorm layers, of the layer that predicts the
            domain; None takes the layer at 2/5 of the depth.
        confidence_filter: keep the balanced forward's logits for the samples where they are at least as
            confident as the per-domain forward's (the official ``FILT``, on in every configuration).

    The rule with its equations and the departures from the official code: :doc:`/policies/bdn`.
    """

    local_mean: Tensor
    local_var: Tensor
    domain_count: Tensor
    active: Tensor

    def __init__(
        self,
        bn: _BatchNorm,
        *,
        num_classes: Annotated[int | None, Range(2)] = None,
        eta: Annotated[float | None, Range(0, 1, low_open=True)] = None,
        gamma: Annotated[float, Range(0, 1)] = 0.0,
        max_domains: Annotated[int, Range(2)] = 64,
        prune: bool = False,
        domain_layer: Annotated[int | None, Range(0)] = None,
        confidence_filter: bool = True,
        **base: Any,
    ) -> None:
        super().__init__(bn, num_classes=num_classes, eta=eta, gamma=gamma, **base)
        if domain_layer is None:
            raise ValueError("bdn: domain_layer is needed to build a layer on its own (tta.adapt sets it)")
        self.max_domains, self.prune = max_domains, prune
        self.domain_layer, self.confidence_filter = domain_layer, confidence_filter
        self.slots = max_domains + 1 if prune else max_domains  # the official prunes after adding one
        self.predicts_domain = self.layer_index == domain_layer
        self.domains: Tensor | None = None  # set by DomainPasses for the per-domain forward only
        self.domain_pred: Tensor | None = None  # the domain layer's last assignment
        self.add_state("local_mean", _slot_source_mean)
        self.add_state("local_var", _slot_source_var)
        self.add_state("domain_count", _zero_counts)
        self.add_state("active", _initial_active)

    @classmethod
    def check_model(cls, model: nn.Module, **options: object) -> None:
        layer = options.get("domain_layer")
        count = sum(1 for m in model.modules() if is_batchnorm(m))
        if isinstance(layer, int) and layer >= count:
            raise ValueError(
                f"bdn: domain_layer={layer}, but the model has {count} BatchNorm layers (0 to {count - 1})"
            )

    @classmethod
    def model_options(cls, model: nn.Module, options: dict[str, object]) -> dict[str, object]:
        """``num_classes`` from the model's last ``nn.Linear``, ``domain_layer`` at 2/5 of the depth, when
        not given."""
        options = with_num_classes("bdn", model, options)
        if options.get("domain_layer") is None:
            count = sum(1 for m in model.modules() if is_batchnorm(m))
            options = {**options, "domain_layer": default_domain_layer(count)}
        return options

    @classmethod
    def register_model_hooks(cls, model: nn.Module, **options: object) -> None:
        """Register the hook that runs the balanced and the per-domain forwards."""
        model.register_forward_hook(DomainPasses(), with_kwargs=True)

    def domain_stats(self) -> tuple[Tensor, Tensor]:
        """``(slots, C)`` class-balanced mean and variance of every domain slot (an unused slot's: the source's)."""
        return self.local_mean.mean(1), self.local_var.mean(1) + self.local_mean.var(1)

    def predict_domains(self, x: Tensor) -> Tensor:
        """Each sample's nearest held domain (class doc), ``(B,)``."""
        mean, var = instance_moments(x, self.stats_dtype)
        distances = wasserstein_distances(mean, var, *self.domain_stats())
        held = torch.arange(self.slots, device=x.device) < self.active
        return torch.where(held, distances, torch.inf).argmin(1)

    def normalize(self, x: Tensor) -> Tensor:
        domains, self.domains = self.domains, None  # used by one call, as the labels
        if domains is None:
            if self.predicts_domain:
                self.domain_pred = self.predict_domains(x)
            return super().normalize(x)
        labels, self.labels = self.labels, None
        if domains.shape != x.shape[:1]:
            raise ValueError(
                f"{self.describe()}: {tuple(domains.shape)} domains for a batch of {x.shape[0]} samples at this "
                "layer; bdn needs every BatchNorm layer to see the model's batch"
            )
        if labels is not None and self.adapting:
            mean, var = self.update_domains(x, labels, domains)
        else:
            mean, var = self.domain_stats()
        return normalize_per_instance(x, mean[domains], var[domains], *self.affine(), self.eps)

    def update_domains(self, x: Tensor, labels: Tensor, domains: Tensor) -> tuple[Tensor, Tensor]:
        """Add a domain if the last held one was assigned, move each (domain, class) towards its samples, and
        prune if asked (class doc; the official ``update_statistics_BDN_2d`` with TRIBE's cap on a step).
        Returns the domain statistics this batch normalizes with: the updated ones before any pruning, as
        the official layer (the state's where the update is not finite)."""
        if labels.shape != x.shape[:1]:
            raise ValueError(
                f"{self.describe()}: the model predicted {tuple(labels.shape)} labels for a batch of {x.shape[0]} "
                "samples at this layer; bdn needs every BatchNorm layer to see the model's batch"
            )
        dtype, classes, slots = self.stats_dtype, self.num_classes, self.slots
        sample_mean, sample_var = instance_moments(x, dtype)
        group = domains * classes + labels
        mean = self.local_mean.view(slots * classes, -1)
        var = self.local_var.view(slots * classes, -1)
        d = sample_mean - mean[group]
        rows = torch.cat([torch.ones_like(d[:, :1]), d, sample_var + d.square()], 1)
        sums = torch.zeros(slots * classes, rows.shape[1], dtype=dtype, device=x.device).index_add_(0, group, rows)
        sums = self.summed(sums)
        counts, d_sum, square = sums.split([1, self.num_features, self.num_features], 1)
        rate = torch.where(counts > 1.0 / self.eta, 1.0 / counts.clamp_min(1), self.eta) * (counts > 0)
        delta = rate * d_sum
        new_mean = (mean + delta).view_as(self.local_mean)
        new_var = (var + rate * (square - counts * var) - delta.square()).view_as(self.local_var)
        domain_count = self.domain_count + counts.view(slots, classes).sum(1).round().to(torch.int64)
        # a new domain when the last held one has a sample now or had one before (its count)
        grow = domain_count.gather(0, (self.active - 1).view(1))[0] > 0
        active = self.active + (grow & (self.active < slots)).to(torch.int64)
        ok = all_finite(new_mean, new_var)
        old_mean, old_var = self.domain_stats()
        norm_mean = torch.where(ok, new_mean.mean(1), old_mean)
        norm_var = torch.where(ok, new_var.mean(1) + new_mean.var(1), old_var)
        if self.prune:
            new_mean, new_var, domain_count, active = self.pruned(
                new_mean, new_var, domain_count, active, grow & (self.active >= self.max_domains)
            )
        self.commit(ok, local_mean=new_mean, local_var=new_var, domain_count=domain_count, active=active)
        return norm_mean, norm_var

    def pruned(
        self, mean: Tensor, var: Tensor, count: Tensor, active: Tensor, prune: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Where ``prune``: the official ``prune_domain``. Among the older half of the held domains (the first
        ``active // 2``), those used least are removed; the rest keep their order and the freed slots go back
        to the source statistics. The per-domain forward has normalized with them before (as the official)."""
        index = torch.arange(self.slots, device=count.device)
        older = index < active // 2
        least = torch.where(older, count, torch.iinfo(torch.int64).max).amin()
        removed = older & (count == least) & prune
        order = torch.argsort(removed.to(torch.int64), stable=True)  # the kept domains first, in order
        kept = active - removed.sum()
        free = index >= kept
        fresh_mean, fresh_var = _slot_source_mean(self), _slot_source_var(self)
        mean = torch.where(free[:, None, None], fresh_mean, mean[order])
        var = torch.where(free[:, None, None], fresh_var, var[order])
        count = torch.where(free, 0, count[order])
        return mean, var, count, kept

    def adapted_stats(self) -> tuple[Tensor, Tensor]:
        """The balanced statistics (the domains' are per sample)."""
        return self.mixture()


class DomainPasses(ModelHook):
    """Forward hook on the model's root: after the model's forward (balanced statistics, no update), run the
    forward that updates the balanced statistics and predicts the domains, then the per-domain forward, and
    return the filtered logits (:doc:`/policies/bdn`)."""

    def __init__(self) -> None:
        self.running = False  # true during the hook's own forwards, which must not start another

    def __call__(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        if self.running:
            return None
        layers = [m for m in model.modules() if isinstance(m, BalancedDomainNorm)]
        if not layers:
            return None
        predictor = next((layer for layer in layers if layer.predicts_domain), None)
        if predictor is None:
            raise RuntimeError(f"bdn: no layer at position {layers[0].domain_layer} predicts the domain")
        check_logits("bdn", output, layers[0].num_classes)
        adapting = any(layer.adapting for layer in layers)
        self.running = True
        try:
            first = output
            if adapting:
                labels = output.detach().argmax(1)
                for layer in layers:
                    layer.labels = labels
                first = model(*args, **kwargs)
                check_logits("bdn", first, layers[0].num_classes)
            domains = predictor.domain_pred
            if domains is None or domains.shape != first.shape[:1]:
                raise RuntimeError("bdn: the domain layer was not reached by the model's forward")
            for layer in layers:
                layer.domains = domains
                if adapting:
                    layer.labels = labels
            last = model(*args, **kwargs)
            check_logits("bdn", last, layers[0].num_classes)
        finally:
            self.running = False
            for layer in layers:
                layer.labels, layer.domains, layer.domain_pred = None, None, None
        if not layers[0].confidence_filter:
            return last
        keep_first = first.softmax(1).amax(1) >= last.softmax(1).amax(1)
        return torch.where(keep_first[:, None], first, last)
