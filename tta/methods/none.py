"""``none``: the policy alone, no method on top (spec M13)."""

from __future__ import annotations

from torch import Tensor

from tta.methods.base import Method
from tta.registry import register_method


@register_method("none")
class NoMethod(Method):
    """The adapted model's own forward: the policy layers adapt their statistics, nothing else learns.

    The baseline a method is compared with, one per policy.
    """

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        return self.check_logits(self.model(x), len(x))
