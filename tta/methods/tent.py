"""``tent``: entropy minimization of the normalization layers' affine parameters. See :doc:`/methods/tent`."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor, nn

from tta.methods.base import LEARNING_RATE, GradientMethod
from tta.options import Range
from tta.registry import register_method


def softmax_entropy(logits: Tensor) -> Tensor:
    """Entropy of each row's softmax distribution, from logits ``(B, classes)``."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


@register_method("tent")
class Tent(GradientMethod):
    """Each batch: predict, then one Adam step on the batch's mean prediction entropy.

    Wang et al. ICLR 2021, "Tent: fully test-time adaptation by entropy minimization" (official
    ``DequanWang/tent``, ``tent.py``). The loss is ``mean_b H(softmax(f(x_b)))`` with
    ``H(p) = -sum_k p_k log p_k``; only the policy layers' affine parameters (``weight``, ``bias``) train,
    every other parameter has ``requires_grad`` False while attached (restored by :func:`tta.detach`). The
    prediction returned is the forward that gave the loss, before the step; with ``steps > 1``, that of the
    last step. The layers' ``stats_grad`` is set (:meth:`GradientMethod.train_affine`), so over ``tbn`` the
    gradient is that of train-mode BatchNorm, as in the official code. Each step is one adapting forward:
    a stateful policy updates once per step.

    Args:
        lr: Adam's learning rate, in (0, 1]; the official 1e-3 (CIFAR), 2.5e-4 on ImageNet.
        beta1: Adam's first-moment decay, in [0, 1).
        beta2: Adam's second-moment decay, in [0, 1).
        weight_decay: Adam's L2 penalty on the affine parameters, >= 0.
        steps: forwards and optimizer steps per batch, >= 1.
        episodic: reset the learner (policy layers, parameters, optimizer) before each batch, so every
            batch is adapted from the state at attach.

    Example:
        >>> import torch, tta
        >>> model = tta.adapt(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)), "tbn")
        >>> learner = tta.attach_method(model, "tent", lr=1e-3)
        >>> logits = learner(torch.randn(16, 4))  # the prediction, then one step

    See :doc:`/methods/tent` (the rule, the departures from the official code, when to use it).
    """

    updates: Tensor

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: Annotated[float, LEARNING_RATE] = 1e-3,
        beta1: Annotated[float, Range(0, 1, high_open=True)] = 0.9,
        beta2: Annotated[float, Range(0, 1, high_open=True)] = 0.999,
        weight_decay: Annotated[float, Range(0)] = 0.0,
        steps: Annotated[int, Range(1)] = 1,
        episodic: bool = False,
    ) -> None:
        super().__init__(model)
        self.lr, self.beta1, self.beta2, self.weight_decay = lr, beta1, beta2, weight_decay
        self.steps, self.episodic = steps, episodic
        self.train_affine(lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64, device=self.initial_affine.device))

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        if self.episodic:
            self.reset()
        with torch.inference_mode(False), torch.enable_grad():
            if x.is_inference():
                x = x.clone()  # an inference tensor cannot be saved for the backward
            for _ in range(self.steps):
                outputs = self.check_logits(self.model(x), len(x))
                if self.step(softmax_entropy(outputs).mean(0)):
                    self.updates += 1
        return outputs.detach()

    def reset(self) -> None:
        super().reset()
        self.updates.zero_()
