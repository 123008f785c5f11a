"""``roid_prior``: ROID's prior correction, the logits weighted by the batch's smoothed class prior. See
:doc:`/methods/roid_prior`."""

from __future__ import annotations

import torch
from torch import Tensor

from tta.methods.base import Method
from tta.registry import register_method


def prior_correction(logits: Tensor) -> Tensor:
    """ROID's correction of ``(batch, classes)`` logits: each column times the batch's smoothed prior.

    With ``p`` the batch's mean softmax prediction over its ``B`` rows and ``K`` classes,
    ``s = max(1/B, 1/K) / max_k p_k`` and the smoothed prior ``(p + s) / (1 + s K)``, the logits are
    multiplied column by column by the smoothed prior. A row with a non-finite logit is left out of ``p``
    and returned unchanged; a batch of such rows only is returned as it is.
    """
    finite = torch.isfinite(logits).all(1)
    rows = int(finite.sum())
    if rows == 0:
        return logits
    classes = logits.shape[1]
    prior = logits[finite].softmax(1).mean(0)
    smooth = max(1 / rows, 1 / classes) / prior.max()
    smoothed_prior = (prior + smooth) / (1 + smooth * classes)
    return torch.where(finite[:, None], logits * smoothed_prior, logits)


@register_method("roid_prior")
class RoidPrior(Method):
    """ROID's prior correction alone: the adapted model's logits weighted by the batch's smoothed class prior.

    Marsden, Döbler & Yang WACV 2024, "Universal Test-time Adaptation through Weight Ensembling, Diversity
    Weighting, and Prior Correction" (official ``mariodoebler/test-time-adaptation``,
    ``classification/methods/roid.py``, the last step of ``ROID.forward_and_adapt``). Forward-only and
    output-level: the adapted model (over whatever policy) predicts; with ``p`` the batch's mean softmax
    prediction, ``B`` its size and ``K`` the classes, ``s = max(1/B, 1/K) / max_k p_k``, and the output is the
    logits multiplied class by class by ``(p + s) / (1 + s K)`` (:func:`prior_correction`). ROID's weight
    ensembling, diversity weighting and training are not part of it. No state, no parameter changes: paused,
    it predicts the same. Takes no options (the official step has none).

    See :doc:`/methods/roid_prior` (the rule, what of ROID is left out, when to use it).
    """

    output_level = True

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        return self.predict(x)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The corrected logits of ``x``, from one forward of the adapted model."""
        return prior_correction(self.check_logits(self.model(x), len(x)))
