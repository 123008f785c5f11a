"""``momentum_decay``: running statistics with a decaying momentum, as in DUA (spec M5)."""

from __future__ import annotations

import warnings
from typing import Annotated

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta.options import Range
from tta.policies.base import NormPolicy
from tta.registry import register_policy
from tta.stats import all_finite, batch_moments, on_host, unbiased


@register_policy("momentum_decay")
class MomentumDecayBatchNorm(NormPolicy):
    """Running statistics updated with momentum ``m_t = m0 * decay^t + min_momentum`` (spec M5).

    Mirza et al. 2022, "The norm must go on: dynamic unsupervised domain adaptation by normalization"
    (DUA). The running state starts at the source statistics; on the t-th adapting forward
    ``mu_r <- (1-m_t) mu_r + m_t mu_B`` and ``var_r <- (1-m_t) var_r + m_t var_B,u``, and the batch is
    normalized with the updated state. ``decay=1`` is a constant-momentum EMA (BN-EMA). ``augment=N``
    (DUA's single-image protocol) is applied at model level by :class:`tta.augment.AugmentedUpdate`,
    which ``tta.adapt`` wraps around the model (and refuses for a model without BatchNorm2d, whose
    inputs are not images); a layer called without it warns. A batch with one value per channel
    updates nothing.
    """

    def __init__(
        self,
        bn: _BatchNorm,
        *,
        momentum: Annotated[float, Range(0, 1)] = 0.1,
        decay: Annotated[float, Range(0, 1, low_open=True)] = 0.94,
        min_momentum: Annotated[float, Range(0, 1)] = 0.005,
        augment: Annotated[int, Range(0)] = 0,
        **base: object,
    ) -> None:
        super().__init__(bn, **base)
        if momentum + min_momentum > 1.0:
            raise ValueError(f"momentum_decay: need momentum + min_momentum <= 1, got {momentum} + {min_momentum}")
        self.momentum, self.decay, self.min_momentum, self.augment = momentum, decay, min_momentum, augment
        self.in_augmented_update = False  # set by AugmentedUpdate while it calls the model
        self.register_buffer("step", torch.zeros((), dtype=torch.int64, device=self.source_mean.device))
        self.register_buffer("running_mean", self.source_mean.clone())
        self.register_buffer("running_var", self.source_var.clone())

    def current_momentum(self, step: Tensor | int) -> Tensor | float:
        """``m_t`` for the t-th update (t = 1, 2, ...) in float64; a Python float for a step read on the
        host (:func:`tta.stats.on_host`: five fewer small kernels per layer)."""
        t = step if isinstance(step, int) else step.double()
        return self.momentum * self.decay ** t + self.min_momentum

    def normalize(self, x: Tensor) -> Tensor:
        if self.augment and not self.in_augmented_update:
            warnings.warn(
                f"momentum_decay was attached with augment={self.augment}, but the model is called without "
                "the AugmentedUpdate wrapper that tta.adapt returned, so no augmented update happens: "
                "use the return value (model = tta.adapt(model, 'momentum_decay', augment=...))",
                stacklevel=2,
            )
        if self.adapting:
            mean_b, var_b, n = batch_moments(x, self.stats_dtype)
            if n >= 2:
                ok = all_finite(mean_b, var_b)
                step = self.step + 1
                if on_host(step):
                    m = self.current_momentum(int(step))  # lerp rounds it to the state's dtype
                else:
                    m = self.current_momentum(step).to(self.stats_dtype)
                self.commit(
                    ok,
                    step=step,
                    running_mean=torch.lerp(self.running_mean, mean_b, m),
                    running_var=torch.lerp(self.running_var, unbiased(var_b, n), m),
                )
        return self.normalize_with(x, self.running_mean, self.running_var)

    def reset(self) -> None:
        self.step.zero_()
        self.running_mean.copy_(self.source_mean)
        self.running_var.copy_(self.source_var)

    def adapted_stats(self) -> tuple[Tensor, Tensor]:
        return self.running_mean, self.running_var

    @classmethod
    def check_model(cls, model: nn.Module, *, augment: int = 0, **options: object) -> None:
        """``augment`` needs image inputs: refuse a model whose BatchNorm layers are all 1-D or 3-D."""
        batchnorms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        if augment > 0 and not any(isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)) for m in batchnorms):
            kinds = ", ".join(sorted({type(m).__name__ for m in batchnorms}))
            raise ValueError(
                f"momentum_decay augment={augment} (DUA) augments image batches (N, C, H, W), but this model "
                f"has only {kinds} layers, so its inputs are not images; use augment=0"
            )

    @classmethod
    def wrap_model(cls, model: nn.Module, *, augment: int = 0, **options: object) -> nn.Module:
        """DUA's protocol when ``augment > 0``: update from augmented copies, predict the original."""
        if augment <= 0:
            return model
        from tta.augment import AugmentedUpdate

        return AugmentedUpdate(model, copies=augment)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, momentum={self.momentum}, decay={self.decay}, "
            f"min_momentum={self.min_momentum}, augment={self.augment}"
        )
