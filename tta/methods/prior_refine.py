"""``prior_refine``: the outputs corrected by the estimated class prior of the batch, then refined by LAME's
Laplacian with its affinity scaled by the stream's label correlation (ours). See :doc:`/methods/prior_refine`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, cast

import torch
from torch import Tensor, nn

from tta.collectives import gather_rows
from tta.composition import detected_changes, estimates, predicted_classes, prior_corrected
from tta.laplacian import FeatureCapture, lame_refinement
from tta.methods.base import Method
from tta.methods.classifier import capture_classifier_input
from tta.options import Range
from tta.registry import register_method
from tta.stats import all_finite, float_buffers, restore_dtypes
from tta.surgery import remove_hooks


@register_method("prior_refine")
class PriorRefine(Method):
    """The adapted model's logits corrected for the batch's estimated class prior and refined over the batch
    by LAME, as much as the stream is measured to be label-correlated (ours).

    Forward-only and output-level: one forward of the adapted model (over whatever policy) per batch, no
    gradient, nothing in the model changes. From the argmax of the outputs it sees, the learner keeps the
    model's usual prediction ``u`` (a running mean of the batches' predicted histograms ``h``), the lag-1
    autocorrelation ``rho`` of the deviations ``h - u`` and the guess ``pi = 1/K + rho (h - u)`` of the
    class composition (:mod:`tta.composition`, the estimates the policy ``rebalance`` normalizes with). It
    adds ``log(K max(pi_k, 0.01/K))`` to the logits (label shift, Saerens et al. 2002), ``pi`` including
    the batch's own prediction, then applies LAME's bound optimization (Boudiaf et al. CVPR 2022,
    :func:`tta.laplacian.lame_refinement`) with the kNN affinity between the L2-normalized features entering
    the model's last ``nn.Linear`` (read by a forward pre-hook) scaled by ``sqrt(rho)``: off on an i.i.d.
    stream, nearly LAME on a strongly correlated one. The output is ``log Y``. While paused it predicts the
    same way from its current estimates, this batch's prediction counted as an adapting call would, and
    updates nothing. Where the policy layers detect changes of domain (a ``restarts`` count, as
    ``rebalance``), the estimates restart with theirs; ``tta.attach_method(tta.adapt(model, "rebalance"),
    "prior_refine")`` then predicts as ``rebalance`` did when it corrected its own outputs. Across processes
    (a SyncBatchNorm model) the class counts and the refined batch are every process's together. The number
    of classes K is the output size of the model's last ``nn.Linear``; a model without one is refused.

    Args:
        momentum: the rate, per ``reference_batch`` images, of the lag-1 products behind ``rho``; the usual
            prediction uses a tenth of it. None takes the BatchNorm momentum of the model's first policy
            layer (0.1 if it had none), as ``rebalance`` does.
        reference_batch: the batch size the rates are given for; a batch of ``B`` uses
            ``1 - (1 - rate)^(B / reference_batch)``.
        correct: add ``log(K pi_k)`` to the logits (the label-prior correction).
        refine: refine the (corrected) logits by LAME with the kNN affinity scaled by ``sqrt(rho)``.
        knn: the number of neighbours of the refinement's affinity, >= 1.
        follow_restarts: restart the estimates when the policy layers detect a change of domain (the
            model's usual prediction in a new domain is new); no effect over a policy that detects none.

    See :doc:`/methods/prior_refine` (the rule, the cost, when to use it).
    """

    output_level = True
    composition: Tensor
    usual_composition: Tensor
    lag_products: Tensor
    guess: Tensor
    rho: Tensor
    steps: Tensor

    def __init__(
        self,
        model: nn.Module,
        *,
        momentum: Annotated[float | None, Range(0, 1, low_open=True)] = None,
        reference_batch: Annotated[int, Range(1)] = 64,
        correct: bool = True,
        refine: bool = True,
        knn: Annotated[int, Range(1)] = 5,
        follow_restarts: bool = True,
    ) -> None:
        super().__init__(model)
        classifier, self.capture = capture_classifier_input(
            model,
            "prior_refine reads the number of classes (and, to refine, the features entering the classifier) from",
            hook=False,  # registered once the classes are checked, so a refused attach leaves no hook
        )
        if classifier.out_features < 2:
            raise ValueError(
                f"prior_refine: the last nn.Linear has {classifier.out_features} output; it needs K >= 2 classes"
            )
        self.num_classes = classifier.out_features
        self.momentum = self.layers[0].bn_momentum if momentum is None else momentum
        self.reference_batch, self.correct, self.refine = reference_batch, correct, refine
        self.knn, self.follow_restarts = knn, follow_restarts
        if refine:
            classifier.register_forward_pre_hook(self.capture)
        for name, value in self.initial_estimates().items():
            self.register_buffer(name, value)

    def initial_estimates(self) -> dict[str, Tensor]:
        """The estimates at attach: a uniform composition and usual prediction, no lag products, ``rho = 0``,
        no batch counted; in the statistics dtype and on the device of the first policy layer."""
        dtype, device = self.layers[0].stats_dtype, self.layers[0].source_mean.device
        uniform = torch.full((self.num_classes,), 1.0 / self.num_classes, dtype=dtype, device=device)
        return {
            "composition": uniform.clone(),  # the last batch's predicted histogram h
            "usual_composition": uniform.clone(),  # u
            "lag_products": torch.zeros(2, dtype=dtype, device=device),  # running E[d_t . d_(t-1)], E[|d_(t-1)|^2]
            "guess": uniform.clone(),  # pi after the last batch
            "rho": torch.zeros((), dtype=dtype, device=device),
            "steps": torch.zeros((), dtype=torch.long, device=device),  # batches since the (re)start
        }

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        return self.corrected(x, update=True)

    def predict(self, x: Tensor) -> Tensor:
        """The prediction from the current estimates, which it does not update (paused)."""
        return self.corrected(x, update=False)

    @torch.no_grad()
    def corrected(self, x: Tensor, update: bool) -> Tensor:
        """The corrected and refined logits of ``x`` from one forward of the adapted model, the estimates
        counting this batch; stored only with ``update``, a batch whose estimates are not finite skipped."""
        before = detected_changes(self.layers) if self.follow_restarts and update else None
        logits, features = self.capture.logits_and_features(
            lambda: self.check_logits(self.model(x), len(x)),
            "prior_refine refine=True",
            required=self.refine,
            hint=" (refine=False corrects without it)",
        )
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"prior_refine estimates the composition of the {self.num_classes} classes of the model's last "
                f"nn.Linear; the model returned {tuple(logits.shape)} logits"
            )
        summed, syncing = self.combined()
        prediction = predicted_classes(logits, self.num_classes, self.composition.dtype, summed, every_class=syncing)
        steps = self.steps + 1
        found = estimates(
            self.composition,
            self.usual_composition,
            self.lag_products,
            prediction,
            steps,
            self.momentum,
            self.reference_batch,
        )
        out = prior_corrected(logits, found.guess) if self.correct else logits
        if self.refine:
            out = self.refined(out, cast(Tensor, features), found.rho.sqrt(), syncing)  # checked above
        if update:
            ok = all_finite(found.composition, found.usual_composition, found.lag_products, found.rho)
            steps = torch.where(ok, steps, self.steps)
            if before is not None:  # the policy restarted its domain: the batches of the new one count from 1
                changed = torch.ne(cast(Tensor, detected_changes(self.layers)), before)
                steps = torch.where(changed, steps.clamp_max(1), steps)
            self.steps.copy_(steps)
            for name in ("composition", "usual_composition", "lag_products", "guess", "rho"):
                buffer = getattr(self, name)
                buffer.copy_(torch.where(ok, getattr(found, name), buffer))
        return out

    def combined(self) -> tuple[Callable[[Tensor], Tensor], bool]:
        """How class counts are summed over processes (the policy layers' SyncBatchNorm group), and whether
        they are now (:meth:`tta.policies.base.NormPolicy.syncing`)."""
        first = self.layers[0]
        return first.summed, first.sync_batchnorm and first.syncing()

    def refined(self, logits: Tensor, features: Tensor, weight: Tensor, syncing: bool) -> Tensor:
        """LAME's ``log Y`` with the kNN affinity times ``weight`` (a batch of one as given); of every process's
        batch together where the policy layers combine processes, this process's rows returned."""
        start, rows = 0, len(logits)
        if syncing:
            group = self.layers[0].process_group
            logits, start = gather_rows(logits, group)
            features, _ = gather_rows(features.detach().flatten(1).float(), group)
        if len(logits) > 1:
            logits = lame_refinement(logits, features, "knn", self.knn, weight=weight)
        return logits[start : start + rows]

    def reset(self) -> None:
        """The policy layers and the estimates as at attach."""
        super().reset()
        for name, value in self.initial_estimates().items():
            getattr(self, name).copy_(value)

    def release(self, keep_adapted: bool = False) -> nn.Module:
        remove_hooks(self.model, FeatureCapture)
        return super().release(keep_adapted)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> PriorRefine:
        """Casts and moves: the estimates keep their dtype (as the policy layers' statistics do)."""
        before = float_buffers(self)
        super()._apply(fn, recurse)
        restore_dtypes(self, before)
        return self
