"""``rebalance``: batch statistics with the class composition taken out, from the model's own predictions (ours)."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta.options import Choice, Range
from tta.policies.base import ModelHook, NormPolicy
from tta.registry import register_policy
from tta.stats import all_finite, instance_moments
from tta.surgery import last_linear


@register_policy("rebalance")
class RebalancedBatchNorm(NormPolicy):
    """Each batch's statistics corrected for its class composition, pooled over time (ours; issue 12).

    A batch's mean and variance mix the domain (shared by all classes) with the classes it holds. In the
    coordinates ``z = (x - m) / s`` of the domain's class-balanced statistics ``(m, s^2)``, class k has
    mean ``a_k`` and second moment ``q_k`` (per channel), with ``mean_k a_k = 0`` and ``mean_k q_k = 1``
    (the equal-weight mixture of the classes has mean 0, variance 1). A batch of composition ``pi`` then
    has ``mu_B = m + s A`` and ``var_B = s^2 (Q - A^2)``, ``A = pi.a``, ``Q = pi.q``, so
    ``s_t^2 = var_B / (Q - A^2)`` and ``m_t = mu_B - s_t A`` recover the balanced statistics from one batch.
    With ``pi`` uniform (or classes not yet learnt, ``a = 0, q = 1``) this is the batch's own statistics.

    One forward per batch. The batch is normalized with ``(m, s^2) <- lerp((m, s^2), (m_t, s_t^2), beta_t)``,
    ``beta_t = max(1/t, momentum)`` (the cumulative mean of the estimates over the first ``1/momentum``
    batches, as AdaBN, then an EMA), where ``pi`` is the predicted composition of the *previous* batch
    (consecutive batches of a correlated stream share theirs; an i.i.d. stream's is near uniform). Then a
    forward hook on the model (:class:`UpdateFromPredictions`) reads the model's softmax and updates, in
    every layer, ``a_k, q_k`` from this batch's instance moments in the coordinates it was normalized with,
    each sample weighted by its class probabilities (running mean per class over at most ``class_memory``
    samples), recentres and rescales them to the constraints above, and stores the batch's mean probability
    as the next ``pi``. A layer called outside the model's forward (no prediction) updates ``(m, s^2)`` only.

    ``prior="uniform"`` switches the correction off (a running mean of batch statistics). Defaults:
    ``momentum`` the layer's BN momentum (the rate its training tracked batch statistics);
    ``class_memory=1000`` samples per class (a standardized class mean then has a standard error below
    0.03 at any spatial size, and a new domain replaces it within 1,000 samples of that class). A batch of
    one value per channel updates nothing. ``Q - A^2`` is floored at 0.01 (a class whose standardized
    variance is below that would otherwise scale the variance by more than 100).
    """

    uses_predictions = True

    def __init__(
        self,
        bn: _BatchNorm,
        *,
        num_classes: Annotated[int | None, Range(2)] = None,
        momentum: Annotated[float | None, Range(0, 1, low_open=True)] = None,
        class_memory: Annotated[float, Range(1)] = 1000.0,
        prior: Annotated[str, Choice("previous", "uniform")] = "previous",
        **base: object,
    ) -> None:
        super().__init__(bn, **base)
        if num_classes is None:
            raise ValueError("rebalance: num_classes is needed to build a layer on its own (tta.adapt reads it)")
        self.num_classes = num_classes
        self.momentum = self.bn_momentum if momentum is None else momentum
        self.class_memory = class_memory
        self.prior = prior
        k, c, dtype = num_classes, self.num_features, self.stats_dtype
        # Pooled raw moments of the batches and their pooled composition (the source counts as balanced).
        self.register_buffer("moment1", self.source_mean.clone())
        self.register_buffer("moment2", self.source_var + self.source_mean.square())
        self.register_buffer("pooled_composition", torch.full((k,), 1.0 / k, dtype=dtype))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("class_offset", torch.zeros(k, c, dtype=dtype))  # a_k
        self.register_buffer("class_square", torch.ones(k, c, dtype=dtype))  # q_k
        self.register_buffer("class_count", torch.zeros(k, dtype=dtype))
        self.register_buffer("composition", torch.full((k,), 1.0 / k, dtype=dtype))  # the last batch's prediction
        self.register_buffer("lag_products", torch.zeros(2, dtype=dtype))  # running E[d_t.d_(t-1)], E[|d_(t-1)|^2]
        self.register_buffer("usual_composition", torch.full((k,), 1.0 / k, dtype=dtype))  # long-run prediction
        self.pending: tuple[Tensor, ...] | None = None  # this batch's moments, for the hook

    @classmethod
    def model_options(cls, model: nn.Module, options: dict[str, object]) -> dict[str, object]:
        """``num_classes`` from the model's last ``nn.Linear`` when not given."""
        if options.get("num_classes") is not None:
            return options
        classifier = last_linear(model)
        if classifier is None:
            raise ValueError(
                f"rebalance reads the number of classes from the model's last nn.Linear, and {type(model).__name__} "
                "has none; pass num_classes=K"
            )
        if classifier.out_features < 2:
            raise ValueError(f"rebalance: the last nn.Linear has {classifier.out_features} output; it needs K >= 2")
        return {**options, "num_classes": classifier.out_features}

    @classmethod
    def wrap_model(cls, model: nn.Module, **options: object) -> nn.Module:
        """Register the hook that learns the class statistics from the prediction; the model is returned."""
        model.register_forward_hook(UpdateFromPredictions())
        return model

    def balanced_stats(self, moment1: Tensor, moment2: Tensor, composition: Tensor) -> tuple[Tensor, Tensor]:
        """The balanced ``(m, s^2)`` of pooled moments of composition ``pi`` (class doc)."""
        a = composition @ self.class_offset
        q = composition @ self.class_square
        var = (moment2 - moment1.square()).clamp_min(0) / (q - a.square()).clamp_min(0.01)
        return moment1 - var.sqrt() * a, var

    def guess_composition(self) -> Tensor:
        """This batch's composition before its prediction: the last batch's, shrunk to uniform by the lag-1
        autocorrelation ``rho`` of the batches' deviations from uniform (the AR(1) predictor; i.i.d.: 0)."""
        uniform = torch.full_like(self.composition, 1.0 / self.num_classes)
        if self.prior == "uniform":
            return uniform
        rho = (self.lag_products[0] / self.lag_products[1].clamp_min(1e-12)).clamp(0, 1)
        rho = rho * (self.steps.to(rho.dtype) * self.momentum).clamp_max(1)  # trusted as evidence accrues
        return uniform + rho * (self.composition - self.usual_composition)

    def normalize(self, x: Tensor) -> Tensor:
        self.pending = None
        moment1, moment2, pooled = self.moment1, self.moment2, self.pooled_composition
        if self.adapting and x.numel() // x.shape[1] >= 2:
            grad = self.grad_through_stats(x)
            sample_mean, sample_var = instance_moments(x, self.stats_dtype, grad=grad)  # (B, C), biased
            mean_b = sample_mean.mean(0)
            square_b = (sample_var + sample_mean.square()).mean(0)  # raw second moment over (B, *S)
            beta = (1.0 / (self.steps + 1).to(self.stats_dtype)).clamp_min(self.momentum)
            guess = self.guess_composition()
            new1, new2 = torch.lerp(moment1, mean_b, beta), torch.lerp(moment2, square_b, beta)
            new_pooled = torch.lerp(pooled, guess, beta)
            ok = all_finite(new1, new2)
            moment1, moment2 = torch.where(ok, new1, moment1), torch.where(ok, new2, moment2)  # grad: the batch's share
            pooled = torch.where(ok, new_pooled, pooled)
            self.commit(ok, moment1=new1, moment2=new2, pooled_composition=new_pooled, steps=self.steps + 1)
            mean, var = self.balanced_stats(moment1, moment2, pooled)
            self.pending = (sample_mean.detach(), sample_var.detach(), mean.detach(), var.detach(), beta, guess, ok)
            return self.normalize_with(x, mean, var)
        return self.normalize_with(x, *self.balanced_stats(moment1, moment2, pooled))

    def learn_classes(self, probabilities: Tensor) -> None:
        """Update ``a_k, q_k`` from the pending batch, each sample weighted by its class probabilities (class doc)."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        sample_mean, sample_var, mean, var, beta, guess, ok = pending
        if probabilities.shape[0] != sample_mean.shape[0]:
            raise ValueError(
                f"{self.describe()}: the model predicted {probabilities.shape[0]} samples for a batch of "
                f"{sample_mean.shape[0]} at this layer; rebalance needs every BatchNorm layer to see the model's batch"
            )
        w = probabilities.to(self.stats_dtype)
        z = (sample_mean - mean) * torch.rsqrt(var + self.eps)
        z_square = (sample_var / (var + self.eps)) + z.square()
        counts = w.sum(0)  # (K,)
        total = self.class_count.clamp_max(self.class_memory) + counts
        rate = (counts / total.clamp_min(1e-12))[:, None]
        offset = self.class_offset + rate * (w.T @ z / counts.clamp_min(1e-12)[:, None] - self.class_offset)
        square = self.class_square + rate * (w.T @ z_square / counts.clamp_min(1e-12)[:, None] - self.class_square)
        centre = offset.mean(0)  # recentre and rescale: mean_k a_k = 0, mean_k q_k = 1
        square = square - 2 * centre * offset + centre.square()
        scale = square.mean(0)
        offset, square = (offset - centre) * scale.rsqrt(), square / scale
        composition = counts / counts.sum()
        usual = self.usual_composition
        lag = torch.stack([((composition - usual) * (self.composition - usual)).sum(), (self.composition - usual).square().sum()])
        lag = torch.lerp(self.lag_products, lag, beta * (self.steps > 1))  # the first batch has no predecessor
        usual = torch.lerp(usual, composition, (1.0 / self.steps.to(beta.dtype)).clamp_min(0.1 * self.momentum))
        # the pool counts the batch as uniform plus its deviation from the model's usual prediction
        deviation = (1.0 / self.num_classes + composition - usual).clamp_min(0)
        deviation = deviation / deviation.sum()
        updates = dict(
            class_offset=offset, class_square=square, class_count=total, composition=composition, lag_products=lag,
            usual_composition=usual,
        )
        if self.prior == "previous":  # the pool holds this batch with its predicted composition, not the guess
            updates["pooled_composition"] = self.pooled_composition + beta * (deviation - guess)
        self.commit(ok & all_finite(offset, square, composition), **updates)

    def reset(self) -> None:
        self.moment1.copy_(self.source_mean)
        self.moment2.copy_(self.source_var + self.source_mean.square())
        self.pooled_composition.fill_(1.0 / self.num_classes)
        self.steps.zero_()
        self.class_offset.zero_()
        self.class_square.fill_(1.0)
        self.class_count.zero_()
        self.composition.fill_(1.0 / self.num_classes)
        self.lag_products.zero_()
        self.usual_composition.fill_(1.0 / self.num_classes)
        self.pending = None

    def adapted_stats(self) -> tuple[Tensor, Tensor]:
        return self.balanced_stats(self.moment1, self.moment2, self.pooled_composition)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_classes={self.num_classes}, momentum={self.momentum}, "
            f"class_memory={self.class_memory}, prior={self.prior!r}"
        )


class UpdateFromPredictions(ModelHook):
    """Forward hook on the model's root: the softmax of the model's output updates the class statistics of
    every ``rebalance`` layer from the batch it just normalized (one forward; ``rebalance``)."""

    def __call__(self, model: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        layers = [m for m in model.modules() if isinstance(m, RebalancedBatchNorm) and m.pending is not None]
        if not layers:
            return
        classes = layers[0].num_classes
        if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[1] != classes:
            for layer in layers:
                layer.pending = None
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"rebalance learns from the model's predictions and needs (batch, {classes}) logits from the "
                f"model; it returned {shape}"
            )
        with torch.no_grad():
            labels = torch.nn.functional.one_hot(output.detach().argmax(1), classes).float()
            for layer in layers:
                layer.learn_classes(labels)
