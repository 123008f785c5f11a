"""``cofa``: correlated feature adaptation, each sample's classifier input averaged with the previous sample's.
See :doc:`/methods/cofa`."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from tta.laplacian import FeatureCapture
from tta.methods.base import Method
from tta.methods.classifier import capture_classifier_input
from tta.registry import register_method
from tta.stats import all_finite
from tta.surgery import remove_hooks


@register_method("cofa")
class Cofa(Method):
    """Each sample's classifier input averaged with the previous sample's, kept where that is more confident.

    Du et al. 2024, "Unified benchmark and versatile framework towards realistic test-time adaptation"
    (UniTTA; official ``LeapLabTHU/UniTTA``, ``core/adapter/unitta_cofa.py``). Forward-only and
    output-level: the adapted model (over whatever policy) gives logits ``f`` from the features ``z`` entering
    its classifier (the model's last ``nn.Linear``, read by a forward pre-hook that :func:`tta.detach`
    removes). With ``z_0`` the last sample of the previous batch (none since attach or reset: ``z_1`` is kept
    as it is), sample ``b`` gets ``z'_b = (z_b + z_{b-1}) / 2`` and the logits ``f'_b`` the classifier gives
    for it. With ``confidence_filter`` a sample keeps its own logits ``f_b`` unless the averaged ones are
    strictly more confident (``max softmax(f_b) >= max softmax(f'_b)`` keeps ``f_b``). The output is the
    chosen logits, whose softmax is the official code's output. Each adapting call then keeps its last
    sample's features (a buffer, reset to none); while paused it predicts the same way and keeps nothing.

    Args:
        confidence_filter: keep a sample's own prediction where it is at least as confident as the averaged
            one (the official ``FILT``, on in every official configuration); off, every sample takes the
            averaged prediction.

    See :doc:`/methods/cofa` (the rule, the departures, when to use it).
    """

    output_level = True
    last_features: Tensor
    has_last: Tensor

    def __init__(self, model: nn.Module, *, confidence_filter: bool = True) -> None:
        super().__init__(model)
        classifier, self.capture = capture_classifier_input(
            model, "cofa averages the features entering the classifier,"
        )
        self.confidence_filter = confidence_filter
        self.classifier = [classifier]  # a plain list: the classifier is registered once, inside the model
        weight = classifier.weight
        self.register_buffer(
            "last_features", torch.zeros(classifier.in_features, dtype=weight.dtype, device=weight.device)
        )
        self.register_buffer("has_last", torch.zeros((), dtype=torch.bool, device=weight.device))

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        return self.averaged(x, keep=True)

    def predict(self, x: Tensor) -> Tensor:
        """The prediction with the previous sample's features, keeping nothing."""
        return self.averaged(x, keep=False)

    @torch.no_grad()
    def averaged(self, x: Tensor, keep: bool) -> Tensor:
        """One forward of the adapted model, then the classifier on the averaged features; with ``keep``
        the batch's last features are kept for the next call."""
        logits, features = self.capture.logits_and_features(lambda: self.check_logits(self.model(x), len(x)), "cofa")
        features = cast(Tensor, features)
        out = self.combine(logits, features)
        if keep:
            last = features[-1].to(self.last_features.dtype)
            ok = all_finite(last)  # a non-finite sample is not carried into the next batch
            self.last_features.copy_(torch.where(ok, last, self.last_features))
            self.has_last.copy_(self.has_last | ok)
        return out

    def combine(self, logits: Tensor, features: Tensor) -> Tensor:
        """The official rule for one batch: each row's features averaged with the previous row's (the first
        with the kept features, if any), classified, and kept where more confident (class doc)."""
        previous = torch.cat([self.last_features.to(features.dtype)[None], features[:-1]])
        first = torch.zeros(len(features), dtype=torch.bool, device=features.device)
        first[0] = True
        alone = first & ~self.has_last  # nothing before the first sample: kept as it is
        mixed = torch.where(alone[:, None], features, (features + previous) / 2)
        new_logits = self.classifier[0](mixed)
        if new_logits.shape != logits.shape:
            raise ValueError(
                f"cofa: the model's last nn.Linear gives {tuple(new_logits.shape)} for the averaged features, but "
                f"the model returned {tuple(logits.shape)}; the classifier must be the model's last layer"
            )
        new_logits = new_logits.to(logits.dtype)
        if not self.confidence_filter:
            return new_logits
        keep_own = logits.softmax(1).amax(1) >= new_logits.softmax(1).amax(1)
        return torch.where(keep_own[:, None], logits, new_logits)

    def reset(self) -> None:
        """The policy layers as at attach, and no previous sample."""
        super().reset()
        self.last_features.zero_()
        self.has_last.fill_(False)

    def release(self, keep_adapted: bool = False) -> nn.Module:
        remove_hooks(self.model, FeatureCapture)
        return super().release(keep_adapted)
