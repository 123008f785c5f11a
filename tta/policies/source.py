"""``source``: normalize with the frozen source statistics (no adaptation). See :doc:`/policies/source`."""

from __future__ import annotations

from torch import Tensor

from tta.policies.base import NormPolicy
from tta.registry import register_policy


@register_policy("source")
class Source(NormPolicy):
    """Normalize with the source statistics, as the original layer does in eval mode.

    Rule: ``mu = mu_s``, ``var = var_s`` (:doc:`/reference/notation`). The no-adaptation baseline of every
    benchmark: bit for bit the original layer's eval-mode output. No options, no state; it uses no batch
    statistics, so across processes (a SyncBatchNorm layer) nothing is combined.

    See :doc:`/policies/source`.
    """

    def normalize(self, x: Tensor) -> Tensor:
        return self.normalize_with_source(x)
