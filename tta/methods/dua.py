"""``dua``: DUA's single-image protocol, an update from augmented copies of each input. See :doc:`/methods/dua`."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tta.methods.base import Method, seeded_generator
from tta.options import Range
from tta.policies.base import pausing
from tta.registry import register_method

CROP_PADDING = 4


def augment_copies(x: Tensor, copies: int, generator: torch.Generator) -> Tensor:
    """``copies`` random augmentations of each image of ``x`` (N, C, H, W), grouped by image.

    Each copy gets a random crop of the zero-padded image (padding 4, as CIFAR's RandomCrop), a random
    horizontal flip, and, for square images, a rotation by a random multiple of 90 degrees. The
    parameters are drawn from ``generator`` on the CPU and applied in a batch.
    """
    h, w = x.shape[-2:]
    batch = x.repeat_interleave(copies, dim=0)
    total = batch.shape[0]
    offsets = torch.randint(0, 2 * CROP_PADDING + 1, (2, total), generator=generator).to(x.device)
    flips = (torch.rand(total, generator=generator) < 0.5).to(x.device)
    turns = torch.randint(0, 4 if h == w else 1, (total,), generator=generator).to(x.device)
    padded = F.pad(batch, [CROP_PADDING] * 4)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (total, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (total, W)
    sample = torch.arange(total, device=x.device)[:, None, None]
    out = padded[sample, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    for k in range(1, 4):
        chosen = turns == k
        if chosen.any():
            out[chosen] = torch.rot90(out[chosen], k, dims=(-2, -1))
    return out


@register_method("dua")
class DUA(Method):
    """Each call: the statistics update once from ``copies`` augmentations of every input image, then the
    original images are predicted with the updated statistics and no further update.

    Mirza et al. CVPR 2022, "The norm must go on: dynamic unsupervised domain adaptation by normalization"
    (official ``jmiemirza/DUA``, ``methods/dua.py``). Over ``momentum_decay`` (its decaying momentum,
    :doc:`/policies/momentum_decay`) this is DUA; it runs over every policy. The augmentation is the
    official one (:func:`augment_copies`): a random crop of the image zero-padded by 4, a random
    horizontal flip and, for square images, a rotation by a random multiple of 90 degrees. Nothing trains:
    the learner holds only the update counter ``updates``. Image batches only: a model without a
    BatchNorm2d layer is refused at attach, a call with an input that is not (N, C, H, W) raises.

    Args:
        copies: augmented copies of each input image in the update batch, >= 1; the official code's 64.
        seed: the k-th update draws its augmentations from a generator seeded by ``(seed, k)``
            (:func:`tta.methods.base.seeded_generator`), so one seed gives the same predictions in any
            process, and :func:`tta.reset` replays them.

    See :doc:`/methods/dua` (the rule, the departures from the official protocol, when to use it).
    """

    updates: Tensor

    def __init__(
        self,
        model: nn.Module,
        *,
        copies: Annotated[int, Range(1)] = 64,
        seed: Annotated[int, Range(0)] = 0,
    ) -> None:
        super().__init__(model)
        if not any(isinstance(layer.original, (nn.BatchNorm2d, nn.SyncBatchNorm)) for layer in self.layers):
            kinds = ", ".join(sorted({type(layer.original).__name__ for layer in self.layers}))
            raise ValueError(
                f"dua augments image batches (N, C, H, W), but this model has only {kinds} layers, so its "
                "inputs are not images"
            )
        self.copies, self.seed = copies, seed
        device = self.layers[0].source_mean.device
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64, device=device))

    def predict(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"dua augments image batches (N, C, H, W); got input of shape {tuple(x.shape)}")
        return self.model(x)

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        generator = seeded_generator(self.seed, int(self.updates))
        with torch.no_grad():  # the update pass's output is not used
            self.model(augment_copies(x, self.copies, generator))
        self.updates += 1
        with pausing(self.layers):
            return self.check_logits(self.predict(x), len(x))

    def reset(self) -> None:
        super().reset()
        self.updates.zero_()
