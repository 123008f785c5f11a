"""``source``: frozen source statistics (spec M1)."""

from __future__ import annotations

from torch import Tensor

from tta.policies.base import NormPolicy
from tta.registry import register_policy


@register_policy("source")
class Source(NormPolicy):
    """Normalize with the source statistics, as the original layer does in eval mode (spec M1).

    The no-adaptation baseline of every benchmark; bit for bit the original layer's output. Uses no
    batch statistics, so across processes (a SyncBatchNorm layer) nothing is combined.
    """

    def normalize(self, x: Tensor) -> Tensor:
        return self.normalize_with_source(x)
