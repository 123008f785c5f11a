"""``balanced``: TRIBE's balanced batch normalization, per-class statistics from pseudo-labels."""

from __future__ import annotations

import contextlib
import math
from typing import Annotated, Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta.options import Range
from tta.policies.base import ModelHook, NormPolicy, check_logits
from tta.registry import register_policy
from tta.stats import all_finite, instance_moments
from tta.surgery import with_num_classes

# The official configs' class coupling per number of classes (CIFAR-10, CIFAR-100, ImageNet).
_OFFICIAL_GAMMA = {10: 0.0, 100: 0.1, 1000: 0.5}


def default_eta(num_classes: int) -> float:
    """The official configs' per-sample step: ``max(0.0005 K, 0.01)`` (0.01, 0.05, 0.5 for 10, 100, 1000)."""
    return max(0.0005 * num_classes, 0.01)


def default_gamma(num_classes: int) -> float:
    """The official configs' ``gamma`` for the class count nearest to ``K`` on a log scale (no formula given)."""
    nearest = min(_OFFICIAL_GAMMA, key=lambda k: abs(math.log(k) - math.log(num_classes)))
    return _OFFICIAL_GAMMA[nearest]


def per_class_source_mean(layer: BalancedBatchNorm) -> Tensor:
    """The source mean for every class, ``(K, C)`` (:data:`tta.policies.base.StateInit`)."""
    return layer.source_mean.expand(layer.num_classes, -1).clone()


def per_class_source_var(layer: BalancedBatchNorm) -> Tensor:
    """The source variance for every class, ``(K, C)``."""
    return layer.source_var.expand(layer.num_classes, -1).clone()


@register_policy("balanced")
class BalancedBatchNorm(NormPolicy):
    """K per-class statistics updated from pseudo-labelled samples; their class-balanced mixture normalizes.

    Su et al. AAAI 2024, "Towards real-world test-time adaptation: tri-net self-training with balanced
    normalization" (TRIBE; official ``Gorilla-Lab-SCUT/TRIBE``, ``core/utils/balanced_bn_pyv.py``). Class k
    holds ``(mu_k, var_k)``, both starting at the source statistics. Each adapting call labels the batch with
    the model's argmax and moves each predicted class towards its samples' mean and biased variance with
    weight ``min(eta n_k, 1)`` (``n_k`` samples predicted k), a share ``gamma`` of the step spread over
    every class; the layer normalizes with the class-balanced mixture ``mu = mean_k mu_k``,
    ``var = mean_k var_k + var_k(mu_k)`` (unbiased over the K classes, as the official code).

    As in the official adapter, the prediction returned is a forward with the current statistics and no
    update; a forward hook on the model (:class:`PredictThenUpdate`) then runs a second forward of the same
    batch labelled by that prediction, which updates every layer and is discarded: two forwards per adapting
    call, one while paused. The model's output must be ``(B, K)`` logits. Across processes (a SyncBatchNorm
    layer) the per-class counts and sums are every process's together.

    The rule with its equations and the departures from the official code: :doc:`/policies/balanced`.

    Args:
        num_classes: the number of classes K (at least 2); None reads it from the output size of the
            model's last ``nn.Linear`` at attach.
        eta: the per-sample step: a class predicted ``n_k`` times moves with weight ``min(eta n_k, 1)``
            towards its samples' statistics. None takes the official configs' ``max(0.0005 K, 0.01)``
            (0.01, 0.05, 0.5 for 10, 100, 1000 classes).
        gamma: the class coupling, the share of each step spread over every class (0: each class moves
            alone). None takes the official config nearest in class count: 0 for 10 classes, 0.1 for 100,
            0.5 for 1000.
    """

    class_mean: Tensor
    class_var: Tensor

    uses_predictions = True
    combines_across_processes = True

    def __init__(
        self,
        bn: _BatchNorm,
        *,
        num_classes: Annotated[int | None, Range(2)] = None,
        eta: Annotated[float | None, Range(0, 1, low_open=True)] = None,
        gamma: Annotated[float | None, Range(0, 1)] = None,
        **base: Any,
    ) -> None:
        super().__init__(bn, **base)
        if num_classes is None:
            raise ValueError("balanced: num_classes is needed to build a layer on its own (tta.adapt reads it)")
        self.num_classes = num_classes
        self.eta = default_eta(num_classes) if eta is None else eta
        self.gamma = default_gamma(num_classes) if gamma is None else gamma
        self.labels: Tensor | None = None  # set by PredictThenUpdate for the updating forward only
        self.add_state("class_mean", per_class_source_mean)
        self.add_state("class_var", per_class_source_var)

    @classmethod
    def model_options(cls, model: nn.Module, options: dict[str, object]) -> dict[str, object]:
        """``num_classes`` from the model's last ``nn.Linear`` when not given."""
        return with_num_classes("balanced", model, options)

    @classmethod
    def register_model_hooks(cls, model: nn.Module, **options: object) -> None:
        """Register the hook that runs the updating forward."""
        model.register_forward_hook(PredictThenUpdate(), with_kwargs=True)

    def mixture(self) -> tuple[Tensor, Tensor]:
        """The class-balanced mean and variance: mean of the class means; mean of the class variances plus
        the (unbiased) variance of the class means."""
        return self.class_mean.mean(0), self.class_var.mean(0) + self.class_mean.var(0)

    def normalize(self, x: Tensor) -> Tensor:
        labels, self.labels = self.labels, None  # used by one call, as the official layer
        if labels is not None and self.adapting:
            self.update(x, labels)
        return self.normalize_with(x, *self.mixture())

    def update(self, x: Tensor, labels: Tensor) -> None:
        """The official per-class step with coupling ``gamma`` (class doc), vectorized over samples and classes."""
        if labels.shape != x.shape[:1]:
            raise ValueError(
                f"{self.describe()}: the model predicted {tuple(labels.shape)} labels for a batch of {x.shape[0]} "
                "samples at this layer; balanced needs every BatchNorm layer to see the model's batch"
            )
        dtype = self.stats_dtype
        sample_mean, sample_var = instance_moments(x, dtype)  # (B, C) over the spatial dims, biased
        mean, var = self.class_mean, self.class_var
        d = sample_mean - mean[labels]  # mean over S of x - mu_y
        d_square = sample_var + d.square()  # mean over S of (x - mu_y)^2
        rows = torch.cat([torch.ones_like(d[:, :1]), d, d_square], 1)  # per class: count, sum d, sum d^2
        sums = torch.zeros(self.num_classes, rows.shape[1], dtype=dtype, device=x.device).index_add_(0, labels, rows)
        sums = self.summed(sums)  # every process's samples together
        counts, d_sum, square = sums.split([1, self.num_features, self.num_features], 1)
        counts = counts[:, 0]
        present = (counts > 0).to(dtype)
        rate = torch.where(counts > 1.0 / self.eta, 1.0 / counts.clamp_min(1), self.eta) * present  # m_k
        delta = rate[:, None] * d_sum
        k_present = present.sum()
        gamma = self.gamma
        new_mean = mean + (1 - gamma) * delta + gamma * delta.sum(0) / k_present
        new_var = var + (1 - gamma) * (rate[:, None] * (square - counts[:, None] * var) - delta.square())
        gap = (rate[:, None] * square - delta.square()).sum(0) / k_present
        new_var = new_var + gamma * (gap - (rate * counts).sum() / k_present * new_var)
        self.commit(all_finite(new_mean, new_var), class_mean=new_mean, class_var=new_var)

    def adapted_stats(self) -> tuple[Tensor, Tensor]:
        return self.mixture()


class PredictThenUpdate(ModelHook):
    """Forward hook on the model's root: after the model's forward (the prediction, no update), label the
    batch with its argmax and run the updating forward of the ``balanced`` layers
    (:doc:`/policies/balanced`)."""

    def __init__(self) -> None:
        self.updating = False  # true during the updating forward, which must not start another

    def __call__(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self.updating:
            return
        layers = [m for m in model.modules() if isinstance(m, BalancedBatchNorm)]
        if not any(layer.adapting for layer in layers):
            return
        check_logits("balanced", output, layers[0].num_classes)
        labels = output.detach().argmax(1)
        self.updating = True
        try:
            for layer in layers:
                layer.labels = labels
            # torch.export cannot save a program holding a grad-mode region: there the updating forward is
            # recorded as is (its output is discarded and the state is written detached either way)
            with contextlib.nullcontext() if torch.compiler.is_exporting() else torch.no_grad():
                model(*args, **kwargs)
        finally:
            self.updating = False
            for layer in layers:
                layer.labels = None
