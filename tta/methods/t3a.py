"""``t3a``: the classifier replaced by prototypes of the most confident test features seen, per class. See
:doc:`/methods/t3a`."""

from __future__ import annotations

from typing import Annotated, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tta.laplacian import FeatureCapture
from tta.methods.base import Method
from tta.methods.classifier import capture_classifier_input
from tta.options import Range
from tta.registry import register_method
from tta.surgery import remove_hooks


def softmax_entropy(logits: Tensor) -> Tensor:
    """Each row's prediction entropy, ``-sum_k p_k log p_k`` with ``p = softmax(logits)``."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


@register_method("t3a")
class T3A(Method):
    """The Test-Time Template Adjuster: each class predicted by the prototype of its most confident supports.

    Iwasawa & Matsuo NeurIPS 2021, "Test-Time Classifier Adjustment Module for Model-Agnostic Domain
    Generalization" (official ``matsuolab/T3A``, ``domainbed/adapt_algorithms.py``, class ``T3A``).
    Forward-only and output-level: the adapted model (over whatever policy) gives the logits and the input
    ``z`` of its last ``nn.Linear`` (its classifier, weights ``W``, read by a forward pre-hook that
    :func:`tta.detach` removes). The supports start as the rows of ``W`` (the warm-up supports), each
    labelled with its own prediction ``argmax(W w_k + b)`` and entropy. Every sample of an adapting batch
    joins the supports of its predicted class with its prediction entropy; each class keeps its
    ``filter_K`` lowest-entropy supports; the batch is then predicted by ``z . c_k / |c_k|``, ``c_k`` the sum
    of class ``k``'s L2-normalized supports. The supports are buffers of a fixed size,
    ``(classes, filter_K, features)``; :meth:`reset` returns them to the warm-up supports. While paused the
    batch is predicted by the current supports and none joins them. A sample whose logits or features are
    not finite joins no support and its row is the model's.

    Args:
        filter_K: the supports each class keeps, its ``filter_K`` lowest-entropy ones, >= 1 (the official
            option; its grid is 1, 5, 20, 50, 100 and all, chosen on validation data).

    See :doc:`/methods/t3a` (the rule, the departures from the official code, when to use it).
    """

    output_level = True
    warmup_supports: Tensor
    warmup_classes: Tensor
    warmup_entropy: Tensor
    supports: Tensor
    support_entropy: Tensor

    def __init__(self, model: nn.Module, *, filter_K: Annotated[int, Range(1)] = 100) -> None:
        super().__init__(model)
        classifier, self.capture = capture_classifier_input(
            model, "t3a starts its supports from the classifier's weights,"
        )
        self.filter_K = filter_K
        with torch.no_grad():
            weight = classifier.weight.detach().clone()
            warmup_logits = F.linear(weight, weight, None if classifier.bias is None else classifier.bias.detach())
        classes, features = weight.shape
        self.register_buffer("warmup_supports", weight)
        self.register_buffer("warmup_classes", warmup_logits.argmax(1))
        self.register_buffer("warmup_entropy", softmax_entropy(warmup_logits))
        self.register_buffer("supports", weight.new_zeros(classes, filter_K, features))
        self.register_buffer("support_entropy", weight.new_full((classes, filter_K), float("inf")))
        self.fill_warmup()

    @torch.no_grad()
    def fill_warmup(self) -> None:
        """The supports as at attach: empty, then the warm-up supports admitted."""
        self.supports.zero_()
        self.support_entropy.fill_(float("inf"))
        self.admit(self.warmup_supports, self.warmup_classes, self.warmup_entropy)

    def admit(self, features: Tensor, classes: Tensor, entropy: Tensor) -> None:
        """Add the rows of ``features`` to the supports of their ``classes``, then keep each class's
        ``filter_K`` lowest-entropy supports (ties: the earlier first, the kept supports before the new
        ones). A row with an infinite entropy is never kept."""
        num_classes, keep, _ = self.supports.shape
        batch = len(features)
        # the candidates of class k: its kept supports, then the batch's rows, those of another class at +inf
        new_key = entropy.new_full((num_classes, batch), float("inf"))
        new_key[classes, torch.arange(batch, device=classes.device)] = entropy.to(new_key.dtype)
        keys = torch.cat([self.support_entropy, new_key], 1)
        order = keys.sort(dim=1, stable=True).indices[:, :keep]
        kept_entropy = keys.gather(1, order)
        offsets = torch.arange(num_classes, device=order.device)[:, None] * keep
        rows = torch.where(order < keep, offsets + order, num_classes * keep + order - keep)
        pool = torch.cat([self.supports.flatten(0, 1), features.to(self.supports.dtype)])
        kept = pool[rows]
        filled = torch.isfinite(kept_entropy)
        self.supports.copy_(torch.where(filled[..., None], kept, torch.zeros_like(kept)))
        self.support_entropy.copy_(kept_entropy)

    def prototype_logits(self, features: Tensor) -> Tensor:
        """``z . c_k / |c_k|`` for each row ``z`` of ``features`` and class ``k``, ``c_k`` the sum of the class's
        L2-normalized supports (an empty class: 0)."""
        prototypes = F.normalize(self.supports, dim=2).sum(1)
        return features @ F.normalize(prototypes, dim=1).to(features.dtype).T

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        return self.predict(x, adapt=True)

    @torch.no_grad()
    def predict(self, x: Tensor, adapt: bool = False) -> Tensor:
        """T3A's logits for ``x`` from one forward of the adapted model; ``adapt``: the batch joins the
        supports first (the official order: a batch is predicted with its own samples among the supports)."""
        num_classes, _, width = self.supports.shape
        logits, found = self.capture.logits_and_features(
            lambda: self.check_logits(self.model(x), len(x)), "t3a", width=width
        )
        features = cast(Tensor, found)
        if logits.shape[1] != num_classes:
            raise ValueError(
                f"t3a predicts the {num_classes} classes of the model's last nn.Linear, and the model returned "
                f"{logits.shape[1]} logits per sample"
            )
        finite = torch.isfinite(logits).all(1) & torch.isfinite(features).all(1)
        if adapt:
            entropy = softmax_entropy(logits).masked_fill(~finite, float("inf"))
            self.admit(features, logits.argmax(1), entropy)
        return torch.where(finite[:, None], self.prototype_logits(features), logits)

    def reset(self) -> None:
        """The policy layers as at attach, and the supports back to the warm-up supports."""
        super().reset()
        self.fill_warmup()

    def release(self, keep_adapted: bool = False) -> nn.Module:
        remove_hooks(self.model, FeatureCapture)
        return super().release(keep_adapted)
