"""``momentum_decay``: running statistics with a decaying momentum, as in DUA (spec M5)."""

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
    """Running statistics updated with momentum ``m_t = m0 * decay^t + min_momentum`` (spec M5).

    Mirza et al. 2022, "The norm must go on: dynamic unsupervised domain adaptation by normalization"
    (DUA). The running state starts at the source statistics; on the t-th adapting forward
    ``mu_r <- (1-m_t) mu_r + m_t mu_B`` and ``var_r <- (1-m_t) var_r + m_t var_B,u``, and the batch is
    normalized with the updated state. ``decay=1`` is a constant-momentum EMA (BN-EMA). DUA's single-image
    protocol (update from augmented copies of each input, then predict it) is the method ``dua``
    (:class:`tta.methods.dua.DUA`), stacked on this policy. A batch with one value per channel updates
    nothing.
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
