"""``rebalance``: batch statistics with the class composition taken out, from the model's own predictions (ours)."""

from __future__ import annotations

import functools
import operator
from typing import Annotated, Any, cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta.composition import Prediction, estimates, predicted_classes
from tta.composition import per_batch as rate_per_batch
from tta.options import Choice, Range
from tta.policies.base import ModelHook, NormPolicy, check_logits, filled, source_mean
from tta.registry import register_policy
from tta.stats import all_finite, instance_moments, on_host, select
from tta.surgery import with_num_classes

# A batch's (sample_mean, sample_var, mean, var, beta, guess, ok) and the pool (moment1, moment2, pooled) before it
Pending = tuple[Tensor, Tensor, Tensor, Tensor, Tensor | float, Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]


def source_second_moment(layer: NormPolicy) -> Tensor:
    """The source statistics' raw second moment ``var + mean^2`` (:data:`tta.policies.base.StateInit`)."""
    return layer.source_var + layer.source_mean.square()


@register_policy("rebalance")
class RebalancedBatchNorm(NormPolicy):
    """Each batch's statistics corrected for its class composition, pooled over a domain (ours).

    A batch's mean and variance mix the domain's statistics with those of the classes it holds. Per layer
    and channel, class k has a learnt mean ``a_k`` and second moment ``q_k`` in the coordinates of the
    domain's class-balanced statistics ``(m, s^2)``; a batch of class composition ``pi`` then has
    ``mu_B = m + s A`` and ``var_B = s^2 (Q - A^2)`` (``A = pi.a``, ``Q = pi.q``), which gives
    ``(m, s^2)`` back in closed form (:meth:`balanced_stats`). The layer pools the raw batch moments over
    the current domain (a cumulative mean floored at ``pool_momentum``), restarts the pool when the first
    layer sees a change of domain that the class model does not explain (:meth:`domain_changed`), and
    normalizes with the balanced statistics of the pool. ``pi`` is estimated from the model's own argmax
    (a forward hook, :class:`UpdateFromPredictions`: one forward per batch; the maths in
    :mod:`tta.composition`): the last batch's predicted histogram as a deviation from the model's usual
    prediction, scaled by ``rho``, the lag-1 autocorrelation of those deviations. Every rate is per
    ``reference_batch`` images. Across processes (a SyncBatchNorm layer) the batch moments, class counts and
    detector residuals are every process's together. The model's outputs are left as it gives them: the
    label-prior correction and the refinement by the same estimates are the method ``prior_refine``
    (:doc:`/methods/prior_refine`), ``tta.attach_method(tta.adapt(model, "rebalance"), "prior_refine")``.

    The rule with its equations, costs and limits: :doc:`/policies/rebalance`; the derivation, the choices
    and the measurements behind them: :doc:`/design/rebalance`.

    Args:
        num_classes: the number of classes K (at least 2); None reads it from the output size of the
            model's last ``nn.Linear`` at attach.
        momentum: the rate, per ``reference_batch`` images, of the composition estimates (the lag-1
            autocorrelation ``rho``); None takes the layer's BatchNorm momentum (0.1 if it has none). The
            usual prediction uses a tenth of it.
        class_memory: the most samples per class that the running class moments ``a_k, q_k`` average over
            (a class's newest batch weighs at least ``n / (class_memory + n)``).
        prior: ``"previous"`` estimates the batch's class composition from the previous predictions;
            ``"uniform"`` takes every batch as balanced: pooled batch moments.
        pool_momentum: the floor of the pool's rate, per ``reference_batch`` images: within a domain the
            pool is a cumulative mean (rate ``1/n`` after ``n`` batches) until ``1/n`` reaches it, so a
            change the detector misses is still forgotten; None takes ``momentum / 10``.
        detect_changes: restart the pool and the composition estimates when the first layer detects a
            change of domain; False keeps one pool (with ``pool_momentum`` it is then an EMA).
        change_threshold: the detector's threshold on the mean over channels of the squared residuals
            (standardized mean and log variance) that the class model does not explain; lower restarts
            more often.
        change_window: the number of images the detector's residuals are averaged over.
        reference_batch: the batch size the rates are given for; a batch of ``B`` uses
            ``1 - (1 - rate)^(B / reference_batch)``, so the pool and the estimates cover the same number
            of images at any batch size. Equal to the batch size, the rates are per batch.
    """

    moment1: Tensor
    moment2: Tensor
    pooled_composition: Tensor
    steps: Tensor
    pool_age: Tensor
    drift: Tensor
    restarts: Tensor
    class_offset: Tensor
    class_square: Tensor
    class_count: Tensor
    composition: Tensor
    lag_products: Tensor
    usual_composition: Tensor
    guess: Tensor

    uses_predictions = True
    combines_across_processes = True

    def __init__(
        self,
        bn: _BatchNorm,
        *,
        num_classes: Annotated[int | None, Range(2)] = None,
        momentum: Annotated[float | None, Range(0, 1, low_open=True)] = None,
        class_memory: Annotated[float, Range(1)] = 1000.0,
        prior: Annotated[str, Choice("previous", "uniform")] = "previous",
        pool_momentum: Annotated[float | None, Range(0, 1, low_open=True)] = None,
        detect_changes: bool = True,
        change_threshold: Annotated[float, Range(0, low_open=True)] = 0.2,
        change_window: Annotated[float, Range(1)] = 128.0,
        reference_batch: Annotated[int, Range(1)] = 64,
        **base: Any,
    ) -> None:
        super().__init__(bn, **base)
        if num_classes is None:
            raise ValueError("rebalance: num_classes is needed to build a layer on its own (tta.adapt reads it)")
        self.num_classes = num_classes
        self.momentum = self.bn_momentum if momentum is None else momentum
        self.class_memory = class_memory
        self.prior = prior
        self.pool_momentum = self.momentum / 10 if pool_momentum is None else pool_momentum
        self.detect_changes = detect_changes
        self.change_threshold, self.change_window = change_threshold, change_window
        self.reference_batch = reference_batch
        k, c, uniform = num_classes, self.num_features, 1.0 / num_classes
        # Pooled raw moments of the batches and their pooled composition (the source counts as balanced).
        self.add_state("moment1", source_mean)
        self.add_state("moment2", source_second_moment)
        self.add_state("pooled_composition", filled((k,), uniform))
        self.add_state("steps", filled((), 0, torch.long))
        self.add_state("pool_age", filled((), 0, torch.long))  # batches pooled since the (re)start
        self.add_state("drift", filled((2, c), 0))  # the change detector's running residuals
        self.add_state("restarts", filled((), 0, torch.long))
        self.add_state("class_offset", filled((k, c), 0))  # a_k
        self.add_state("class_square", filled((k, c), 1))  # q_k
        self.add_state("class_count", filled((k,), 0))
        self.add_state("composition", filled((k,), uniform))  # the last batch's prediction
        self.add_state("lag_products", filled((2,), 0))  # running E[d_t.d_(t-1)], E[|d_(t-1)|^2]
        self.add_state("usual_composition", filled((k,), uniform))  # long-run prediction
        self.add_state("guess", filled((k,), uniform))  # pi for the next batch
        self.pending: Pending | None = None  # this batch's moments, for the hook

    @classmethod
    def retired_option(cls, option: str, value: object) -> str | None:
        """``correct_outputs`` and ``refine`` (the output step) are the method ``prior_refine``: say how to
        use it."""
        if option not in ("correct_outputs", "refine"):
            return None
        method = 'tta.attach_method(tta.adapt(model, "rebalance"), "prior_refine")'
        if value is False and option == "correct_outputs":
            return (
                "rebalance no longer takes correct_outputs: it is a normalization policy and leaves the outputs "
                f"as the model gives them, so drop it; the output correction is the method prior_refine: {method} "
                "(tta-bench: --methods prior_refine)"
            )
        if value is False:
            return (
                "rebalance no longer takes refine=False: it leaves the outputs as the model gives them; the "
                "correction without the refinement is the method prior_refine with refine=False: tta.attach_method("
                'tta.adapt(model, "rebalance"), "prior_refine", refine=False) '
                "(tta-bench: --methods prior_refine --option prior_refine.refine=False)"
            )
        return (
            f"rebalance no longer takes {option}={value!r}; the label-prior correction and the refinement of the "
            f"outputs are the method prior_refine: {method} (tta-bench: --methods prior_refine)"
        )

    @classmethod
    def model_options(cls, model: nn.Module, options: dict[str, object]) -> dict[str, object]:
        """``num_classes`` from the model's last ``nn.Linear`` when not given."""
        return with_num_classes("rebalance", model, options)

    @classmethod
    def register_model_hooks(cls, model: nn.Module, **options: object) -> None:
        """Register the hook that learns the class statistics from the prediction."""
        model.register_forward_hook(UpdateFromPredictions())

    def balanced_stats(self, moment1: Tensor, moment2: Tensor, composition: Tensor) -> tuple[Tensor, Tensor]:
        """The balanced ``(m, s^2)`` of pooled moments of composition ``pi`` (:doc:`/policies/rebalance`).

        The class moments are kept as measured, in whatever coordinates: the result is invariant to an
        affine change of them, so the constraints are applied here in closed form (``c``, ``r``: mean and
        variance of the equal-weight mixture; ``A``, ``V``: of the ``pi``-weighted one):
        ``s^2 = var_pool r / V``, ``m = mu_pool - sqrt(s^2 / r) (A - c)``.
        """
        a, q = composition @ self.class_offset, composition @ self.class_square  # (C,) each
        c = self.class_offset.mean(0)
        spread = torch.addcmul(self.class_square.mean(0), c, c, value=-1).clamp_min(1e-12)
        narrowest = 0.01 * spread
        var = torch.addcmul(moment2, moment1, moment1, value=-1).clamp_min(0) * spread
        var = var / torch.maximum(torch.addcmul(q, a, a, value=-1), narrowest)
        return torch.addcmul(moment1, (var / spread).sqrt(), a - c, value=-1), var

    def normalize(self, x: Tensor) -> Tensor:
        self.pending = None
        moment1, moment2, pooled = self.moment1, self.moment2, self.pooled_composition
        syncing = self.sync_batchnorm and self.syncing()
        if self.adapting and (x.numel() // x.shape[1] >= 2 or syncing):
            grad = self.grad_through_stats(x)
            sample_mean, sample_var = instance_moments(x, self.stats_dtype, grad=grad)  # (B, C), biased
            mean_b, square_b, batch = self.batch_raw_moments(sample_mean, sample_var, syncing)
            if batch * (x.numel() // (x.shape[0] * x.shape[1])) < 2:  # one value per channel in every process
                return self.normalize_with(x, *self.balanced_stats(moment1, moment2, pooled))
            beta = self.pool_rate(batch)
            guess = self.guess
            previous = (moment1.clone(), moment2.clone(), pooled.clone())
            new1, new2 = torch.lerp(moment1, mean_b, beta), torch.lerp(moment2, square_b, beta)
            new_pooled = torch.lerp(pooled, guess, beta)
            ok = all_finite(new1, new2)
            moment1, moment2 = select(ok, new1, moment1), select(ok, new2, moment2)  # grad: the batch's share
            pooled = select(ok, new_pooled, pooled)
            self.commit(
                ok,
                moment1=new1,
                moment2=new2,
                pooled_composition=new_pooled,
                steps=self.steps + 1,
                pool_age=self.pool_age + 1,
            )
            mean, var = self.balanced_stats(moment1, moment2, pooled)
            moments = (sample_mean, sample_var, mean, var)
            if grad:  # only then do they carry a gradient (the class statistics learn without one)
                moments = (sample_mean.detach(), sample_var.detach(), mean.detach(), var.detach())
            self.pending = (*moments, beta, guess, ok, previous)
            return self.normalize_with(x, mean, var)
        return self.normalize_with(x, *self.balanced_stats(moment1, moment2, pooled))

    def batch_raw_moments(self, sample_mean: Tensor, sample_var: Tensor, syncing: bool) -> tuple[Tensor, Tensor, int]:
        """The batch's per-channel mean and raw second moment over ``(B, *S)`` from its instance moments, and ``B``;
        with ``syncing``, of every process's batch together (one all-reduce of the sums over the samples)."""
        square = torch.addcmul(sample_var, sample_mean, sample_mean)
        if not syncing:
            return sample_mean.mean(0), square.mean(0), sample_mean.shape[0]
        count = torch.full((1,), float(len(sample_mean)), dtype=square.dtype, device=square.device)
        total = self.summed(torch.cat([count, sample_mean.sum(0), square.sum(0)]))
        batch = int(total[0])
        return total[1 : 1 + self.num_features] / batch, total[1 + self.num_features :] / batch, batch

    def undo_pool_update(self) -> None:
        """Put the pool back as it was before the pending batch, whose prediction was refused."""
        batch, self.pending = self.pending, None
        if batch is not None:
            moment1, moment2, pooled = batch[7]
            self.commit(
                batch[6],
                moment1=moment1,
                moment2=moment2,
                pooled_composition=pooled,
                steps=self.steps - 1,
                pool_age=self.pool_age - 1,
            )

    def pool_rate(self, batch: int) -> Tensor | float:
        """``beta = max(1/n, pool_momentum)`` for a batch of ``batch`` images (:doc:`/policies/rebalance`): a
        Python number where the batch count is read on the host (:func:`tta.stats.on_host`), saving three small
        kernels per layer."""
        floor = self.per_batch(self.pool_momentum, batch)
        if on_host(self.pool_age):
            return max(1.0 / (int(self.pool_age) + 1), floor)
        return (1.0 / (self.pool_age + 1).to(self.stats_dtype)).clamp_min(floor)

    def per_batch(self, rate: float, batch: int | Tensor) -> float | Tensor:
        """The rate of a batch of ``batch`` images for a ``rate`` per ``reference_batch`` images
        (:func:`tta.composition.per_batch`, :doc:`/policies/rebalance`)."""
        return rate_per_batch(rate, batch, self.reference_batch)

    def domain_changed(self, labels: Tensor, valid: Tensor | None = None) -> Tensor:
        """Whether the pending batch comes from another domain than the pool (a 0-dim bool).

        Its instance moments ``z_i, z2_i`` in the coordinates it was normalized with, against what the
        class model predicts for its predicted labels (``a_k, q_k`` moved to the balanced frame: ``c``,
        ``r`` as in :meth:`balanced_stats`): per channel ``d1 = mean_i (z_i - a~_(k_i))`` and
        ``d2 = log(mean_i z2_i / mean_i q~_(k_i))``, averaged over ``change_window`` images (an EMA at
        rate ``B / change_window``). A change when ``mean_c (d1^2 + d2^2)`` exceeds ``change_threshold``;
        the running residuals then start again from 0. Only the ``valid`` samples count (default all); a batch
        whose pool update was refused (non-finite) changes nothing."""
        pending = cast(Pending, self.pending)  # the hook calls it for a layer with a pending batch
        sample_mean, sample_var, mean, var = pending[:4]
        c = self.class_offset.mean(0)
        r = (self.class_square.mean(0) - c.square()).clamp_min(1e-12)
        offset = (self.class_offset - c) * r.rsqrt()
        square = (self.class_square - 2 * c * self.class_offset + c.square()) / r
        z = (sample_mean - mean) * torch.rsqrt(var + self.eps)
        z_square = sample_var / (var + self.eps) + z.square()
        if valid is None:
            valid = torch.ones_like(labels, dtype=torch.bool)
        # sums over the samples, then over the processes; the count stays a tensor: a Python weight of the
        # batch size makes inductor's lerp guard on it (>= 0.5)
        sums = [torch.where(valid[:, None], rows, 0).sum(0) for rows in (z - offset[labels], z_square, square[labels])]
        *sums, images = self.summed(torch.cat([*sums, valid.sum().to(z.dtype)[None]])).split(self.num_features)
        images = images[0]
        shift, second, expected = (t / images for t in sums)
        residual = torch.stack([shift, torch.log(second.clamp_min(1e-12) / expected.clamp_min(1e-12))])
        drift = torch.lerp(self.drift, residual, (images / self.change_window).clamp_max(1.0))
        ok = functools.reduce(operator.and_, pending[6:7], all_finite(drift))  # and the batch's pool update
        changed = (drift.square().sum(0).mean() > self.change_threshold) & (self.steps > 1) & ok
        drift = torch.where(changed, torch.zeros_like(drift), drift)
        self.commit(ok, drift=drift)
        return changed

    def restart_pool(self, changed: Tensor) -> None:
        """After a change, the pool keeps its old content as one batch: the next batch weighs 1/2, then
        1/3, ... (a cumulative mean over the new domain), down to ``pool_momentum``; the composition
        estimates, which count their batches by ``pool_age`` too, restart likewise. ``restarts`` counts
        the changes detected (a diagnostic, in the state)."""
        self.commit(changed, pool_age=self.pool_age.clamp_max(1), restarts=self.restarts + 1)

    @classmethod
    def learn_classes(
        cls,
        layers: list[RebalancedBatchNorm],
        labels: Tensor,
        classes: Tensor,
        index: Tensor,
        shared: dict[str, Tensor],
        valid: Tensor | None = None,
    ) -> None:
        """Update ``a_k, q_k`` of the predicted ``classes`` (``labels = classes[index]``) in every layer from its
        pending batch, and store the composition estimates the hook computed once for every layer
        (:doc:`/policies/rebalance`).
        Only the ``valid`` samples count (default all: the hook leaves out those with a non-finite output).

        All layers in one pass: their instance moments side by side, one sum per class (``index_add_``), one
        step for every class row (the count and rate of each class are the first layer's, the same
        in every layer), so the cost per layer is a gather and a write of its rows. Nothing is written unless
        every layer's pool update and every new row are finite: one bad layer leaves every layer as it was."""
        pending = []
        for layer in layers:
            batch, layer.pending = layer.pending, None
            if batch is not None:
                pending.append((layer, batch))
        groups: dict[tuple[torch.device, torch.dtype], list] = {}
        for layer, batch in pending:  # one concatenation per device and dtype (a model may span several)
            groups.setdefault((batch[0].device, batch[0].dtype), []).append((layer, batch))
        for group in groups.values():
            cls._learn_group(group, classes, index, shared, valid)

    @staticmethod
    def _learn_group(
        group: list[tuple[RebalancedBatchNorm, tuple]],
        classes: Tensor,
        index: Tensor,
        shared: dict[str, Tensor],
        valid: Tensor | None,
    ) -> None:
        """:meth:`learn_classes` for layers whose pending moments share a device and dtype (the state's)."""
        layers = [layer for layer, _ in group]
        sample_mean, sample_var, mean, var = (torch.cat([batch[i] for _, batch in group], -1) for i in range(4))
        first, device = layers[0], sample_mean.device
        classes, index = classes.to(device), index.to(device)
        eps: Tensor | float = layers[0].eps
        if any(layer.eps != eps for layer in layers):
            eps = torch.cat([torch.full_like(batch[3], layer.eps) for layer, batch in group])
        inv_std = torch.rsqrt(var + eps)
        z = (sample_mean - mean) * inv_std
        moments = torch.cat([z, torch.addcmul(z.square(), sample_var, inv_std.square())], 1)
        if valid is not None:
            moments = torch.where(valid.to(device)[:, None], moments, 0)
        counts = shared["counts"].to(device=device, dtype=z.dtype)
        sums = torch.zeros(len(classes), moments.shape[1], dtype=z.dtype, device=device).index_add_(0, index, moments)
        sums = first.summed(sums)
        old_count = first.class_count[classes]
        total = old_count.clamp_max(first.class_memory) + counts
        rate = (counts / total.clamp_min(1e-12))[:, None]
        old = torch.cat(
            [layer.class_offset[classes] for layer in layers] + [layer.class_square[classes] for layer in layers], 1
        )
        new = torch.lerp(old, sums / counts.clamp_min(1)[:, None], rate)
        ok = functools.reduce(operator.and_, [batch[6] for _, batch in group], all_finite(new, shared["composition"]))
        if on_host(ok) and not ok:
            return
        new = select(ok, new, old).split([layer.num_features for layer in layers] * 2, dim=1)
        total = select(ok, torch.where(counts > 0, total, old_count), old_count)
        deviation = shared["deviation"].to(device)
        for i, (layer, batch) in enumerate(group):  # rows of the present classes only, in place (K can be 1,000)
            layer.class_offset.index_copy_(0, classes, new[i])
            layer.class_square.index_copy_(0, classes, new[len(group) + i])
            layer.class_count.index_copy_(0, classes, total)
            updates = {name: shared[name] for name in ("composition", "lag_products", "usual_composition", "guess")}
            if first.prior == "previous":  # the pool holds this batch with its predicted composition, not the guess
                updates["pooled_composition"] = layer.pooled_composition + batch[4] * (deviation - batch[5])
            layer.commit(ok, **updates)

    def shared_estimates(self, prediction: Prediction) -> dict[str, Tensor]:
        """The composition estimates after a batch whose predicted classes are ``prediction``, the same in every
        layer (computed once, from this layer's state; :func:`tta.composition.estimates`): this batch's
        composition, the usual one, the lag-1 products, the next batch's guess (uniform with
        ``prior="uniform"``), the batch's deviation from the usual prediction, and the counts. The batches
        since the last restart are ``pool_age``, which counts this one already."""
        found = estimates(
            self.composition,
            self.usual_composition,
            self.lag_products,
            prediction,
            self.pool_age,
            self.momentum,
            self.reference_batch,
        )
        shared = {**found._asdict(), "counts": prediction.counts}
        if self.prior == "uniform":
            shared["guess"] = torch.full_like(found.guess, 1.0 / self.num_classes)
        return shared

    def reset(self) -> None:
        super().reset()
        self.pending = None

    def adapted_stats(self) -> tuple[Tensor, Tensor]:
        return self.balanced_stats(self.moment1, self.moment2, self.pooled_composition)


class UpdateFromPredictions(ModelHook):
    """Forward hook on the model's root: the argmax of the model's output updates the class statistics of
    every ``rebalance`` layer from the batch it just normalized (one forward; :class:`RebalancedBatchNorm`);
    the output is returned as the model gave it. Samples whose output is not finite count in no estimate. An
    output that is not ``(batch, K)`` logits, or a layer that saw another batch size, is refused with the
    pools put back. A paused forward learns nothing."""

    def __call__(self, model: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        layers = [m for m in model.modules() if isinstance(m, RebalancedBatchNorm)]
        if not layers:
            return
        pending = [layer for layer in layers if layer.pending is not None]
        first = (pending or layers)[0]
        try:
            check_logits("rebalance", output, first.num_classes)
            for layer in pending:
                size = cast(Pending, layer.pending)[0].shape[0]  # pending: the layers with a batch
                if size != output.shape[0]:
                    raise ValueError(
                        f"{layer.describe()}: the model predicted {output.shape[0]} samples for a batch of "
                        f"{size} at this layer; rebalance needs every BatchNorm layer to see "
                        "the model's batch"
                    )
        except ValueError:
            for layer in pending:
                layer.undo_pool_update()
            raise
        if not pending:  # paused, or called outside the layers' adapting forward: nothing to learn
            return
        # Everything below reads the detached output and the layers' detached moments, so it records no
        # autograd graph without a no_grad region (which torch.export would keep as a subgraph of no output).
        # every class (static shapes, no host sync; the same rows in every process) where processes combine
        syncing = first.sync_batchnorm and first.syncing()
        prediction = predicted_classes(
            output.detach(), first.num_classes, first.stats_dtype, first.summed, every_class=syncing
        )
        shared = first.shared_estimates(prediction)
        if first.detect_changes:
            changed = first.domain_changed(prediction.labels, prediction.valid)
            if not on_host(changed) or changed:  # read once on the host: usually nothing to restart
                for layer in pending:
                    layer.restart_pool(changed)
        RebalancedBatchNorm.learn_classes(
            pending, prediction.labels, prediction.classes, prediction.inverse, shared, prediction.valid
        )
