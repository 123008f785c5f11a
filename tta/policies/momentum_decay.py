"""``momentum_decay``: running statistics with a decaying momentum, as in DUA. See :doc:`/policies/momentum_decay`."""

from __future__ import annotations

from typing import Annotated, Any, overload

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from tta.options import Range
from tta.policies.base import filled, source_mean, source_var
from tta.policies.running import RunningStatsPolicy, State
from tta.registry import register_policy
from tta.stats import host_int, unbiased


@register_policy("momentum_decay")
class MomentumDecayBatchNorm(RunningStatsPolicy):
    """Running statistics updated with momentum ``m_t = momentum * decay^t + min_momentum``.

    Mirza et al. CVPR 2022, "The norm must go on: dynamic unsupervised domain adaptation by normalization"
    (DUA; official ``jmiemirza/DUA``, ``methods/dua.py``). The running state starts at the source
    statistics; on the t-th adapting forward (t = 1, 2, ...) ``mu_r <- (1-m_t) mu_r + m_t mu_B`` and
    ``var_r <- (1-m_t) var_r + m_t var_B,u`` (unbiased, as PyTorch's running update), and the batch is
    normalized with the updated state. ``decay=1`` is a constant-momentum EMA (BN-EMA). DUA's
    single-image protocol (update from augmented copies of each input, then predict it) is the method
    ``dua`` (:doc:`/methods/dua`), stacked on this policy; an ``augment`` option is refused with a message
    that says so. A batch with one value per channel (n = 1) updates nothing.

    Args:
        momentum: ``m0``, the decaying part of the momentum, in [0, 1] (default 0.1, DUA's).
            ``momentum + min_momentum`` must not exceed 1.
        decay: ``omega``, the factor the decaying part is multiplied by at each update, in (0, 1]
            (default 0.94, DUA's); 1 keeps the momentum constant at ``momentum + min_momentum``.
        min_momentum: ``zeta``, the floor the momentum decays to, in [0, 1] (default 0.005, DUA's):
            the running statistics keep following the stream at that rate.

    See :doc:`/policies/momentum_decay`.
    """

    step: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(
        self,
        bn: _BatchNorm,
        *,
        momentum: Annotated[float, Range(0, 1)] = 0.1,
        decay: Annotated[float, Range(0, 1, low_open=True)] = 0.94,
        min_momentum: Annotated[float, Range(0, 1)] = 0.005,
        **base: Any,
    ) -> None:
        super().__init__(bn, **base)
        if momentum + min_momentum > 1.0:
            raise ValueError(f"momentum_decay: need momentum + min_momentum <= 1, got {momentum} + {min_momentum}")
        self.momentum, self.decay, self.min_momentum = momentum, decay, min_momentum
        self.add_state("step", filled((), 0, torch.int64))
        self.add_state("running_mean", source_mean)
        self.add_state("running_var", source_var)

    @overload
    def current_momentum(self, step: int) -> float: ...
    @overload
    def current_momentum(self, step: Tensor) -> Tensor: ...
    def current_momentum(self, step: Tensor | int) -> Tensor | float:
        """``m_t`` for the t-th update (t = 1, 2, ...): a Python float for a step given as a number, else a
        tensor in the statistics dtype (computed in float64)."""
        if isinstance(step, int):
            return self.momentum * self.decay**step + self.min_momentum
        return (self.momentum * self.decay ** step.double() + self.min_momentum).to(self.stats_dtype)

    def update(self, mean: Tensor, var: Tensor, n: int) -> dict[str, Tensor | int]:
        step = host_int(self.step) + 1
        m = self.current_momentum(step)  # a Python float on the host: lerp rounds it to the state's dtype
        return {
            "step": step,
            "running_mean": torch.lerp(self.running_mean, mean, m),
            "running_var": torch.lerp(self.running_var, unbiased(var, n), m),
        }

    def statistics(self, state: State) -> tuple[Tensor, Tensor]:
        return state["running_mean"], state["running_var"]

    @classmethod
    def retired_option(cls, option: str, value: object) -> str | None:
        """``augment`` (DUA's augmented update) is the method ``dua``: say how to use it."""
        if option != "augment":
            return None
        if value == 0:
            return "momentum_decay no longer takes augment; augment=0 (no augmentation) is what it does now: drop it"
        return (
            f"momentum_decay no longer takes augment={value}; DUA is a method: "
            f'tta.attach_method(tta.adapt(model, "momentum_decay"), "dua", copies={value}) '
            "(tta-bench: --methods dua --option dua.copies=N)"
        )
