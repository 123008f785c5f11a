"""``tent``: entropy minimization of the normalization layers' affine parameters (spec M13)."""

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
    """Each batch: predict, then one Adam step on the batch's mean prediction entropy (spec M13).

    Wang et al. ICLR 2021, "Tent: fully test-time adaptation by entropy minimization" (official
    DequanWang/tent). Only the policy layers' affine parameters train: every other parameter has
    ``requires_grad`` False while attached (restored by ``tta.detach``). The prediction returned is the
    forward that gave the loss, before the step (detached from the graph); with ``steps > 1`` that of
    the last step, as the official code. ``episodic`` resets everything before each batch.

    The layers' ``stats_grad`` is set (:meth:`GradientMethod.train_affine`): over ``tbn`` the gradient
    flows through the batch statistics, which makes it equal to the official code (train-mode BatchNorm
    without running statistics); over the other policies through the batch's (or instance's) share of
    their statistics, as the official UnMix-TNS layers under Tent (``NormPolicy`` doc). Each step is one
    adapting forward, so a stateful policy updates once per step.

    Departures, on purpose: the model is not switched to ``train()`` (dropout stays off; the layers
    adapt in any mode); every policy layer trains (BatchNorm1d/2d/3d, SyncBatchNorm), where the official
    code collects BatchNorm2d only; a batch with one value per channel normalizes with the source statistics, where
    train-mode BatchNorm raises; a non-finite loss or gradient skips the step, and a step that makes a
    parameter non-finite is undone (both logged as a warning), instead of turning the parameters into
    NaN for the rest of the stream.
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
