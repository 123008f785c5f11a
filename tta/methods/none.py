"""``none``: the policy alone, no method on top. See :doc:`/methods/none`."""

from __future__ import annotations

from torch import Tensor

from tta.methods.base import Method
from tta.registry import register_method


@register_method("none")
class NoMethod(Method):
    """The adapted model's own forward: the policy layers adapt their statistics, nothing else learns.

    The baseline a method is compared with, one per policy: ``tta.attach_method(model, "none")(x)`` equals
    ``model(x)``, and the learner is reset, paused, saved and detached like any other. Takes no options.

    Example:
        >>> import torch, tta
        >>> model = tta.adapt(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)), "rbn")
        >>> learner = tta.attach_method(model, "none")

    See :doc:`/methods/none`.
    """

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        return self.check_logits(self.model(x), len(x))
