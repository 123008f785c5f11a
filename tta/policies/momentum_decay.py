"""``momentum_decay``: running statistics with a decaying momentum, as in DUA (spec M5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta.policies.base import NormPolicy
from tta.registry import register_policy
from tta.stats import all_finite, batch_moments, normalize, unbiased


@register_policy("momentum_decay")
class MomentumDecayBatchNorm(NormPolicy):
    """Running statistics updated with momentum ``m_t = m0 * decay^t + min_momentum`` (spec M5).

    Mirza et al. 2022, "The norm must go on: dynamic unsupervised domain adaptation by normalization"
    (DUA). The running state starts at the source statistics; on the t-th adapting forward
    ``mu_r <- (1-m_t) mu_r + m_t mu_B`` and ``var_r <- (1-m_t) var_r + m_t var_B,u``, and the batch is
    normalized with the updated state. ``decay=1`` is a constant-momentum EMA (BN-EMA). ``augment=N``
    (DUA's single-image protocol) is applied at model level by :class:`tta.augment.AugmentedUpdate`,
    which ``tta.adapt`` wraps around the model. A batch with one value per channel updates nothing.
    """

    def __init__(
        self,
        bn: _BatchNorm,
        *,
        momentum: float = 0.1,
        decay: float = 0.94,
        min_momentum: float = 0.005,
        augment: int = 0,
        **base: object,
    ) -> None:
        super().__init__(bn, **base)
        if not (0.0 <= momentum and 0.0 <= min_momentum and momentum + min_momentum <= 1.0):
            raise ValueError(
                f"momentum_decay: need momentum >= 0, min_momentum >= 0 and momentum + min_momentum <= 1, "
                f"got {momentum} and {min_momentum}"
            )
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"momentum_decay: decay must lie in (0, 1], got {decay}")
        if augment < 0:
            raise ValueError(f"momentum_decay: augment must be >= 0, got {augment}")
        self.momentum, self.decay, self.min_momentum, self.augment = momentum, decay, min_momentum, augment
        self.register_buffer("step", torch.zeros((), dtype=torch.int64, device=self.source_mean.device))
        self.register_buffer("running_mean", self.source_mean.clone())
        self.register_buffer("running_var", self.source_var.clone())

    def current_momentum(self, step: Tensor) -> Tensor:
        """``m_t`` for the t-th update (t = 1, 2, ...)."""
        return self.momentum * self.decay ** step.double() + self.min_momentum

    def normalize(self, x: Tensor) -> Tensor:
        if self.adapting:
            mean_b, var_b, n = batch_moments(x)
            if n >= 2:
                ok = all_finite(mean_b, var_b)
                step = self.step + 1
                m = self.current_momentum(step).float()
                self.commit(
                    ok,
                    step=step,
                    running_mean=torch.lerp(self.running_mean, mean_b, m),
                    running_var=torch.lerp(self.running_var, unbiased(var_b, n), m),
                )
        return normalize(x, self.running_mean, self.running_var, self.weight, self.bias, self.eps)

    def reset(self) -> None:
        self.step.zero_()
        self.running_mean.copy_(self.source_mean)
        self.running_var.copy_(self.source_var)

    def adapted_stats(self) -> tuple[Tensor, Tensor]:
        return self.running_mean, self.running_var

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
