"""``lame``: Laplacian-regularized maximum likelihood over the batch, on the model's outputs. See
:doc:`/methods/lame`."""

from __future__ import annotations

from typing import Annotated, cast

import torch
from torch import Tensor, nn

from tta.laplacian import FeatureCapture, lame_refinement
from tta.methods.base import Method
from tta.methods.classifier import capture_classifier_input
from tta.options import Choice, Range
from tta.registry import register_method
from tta.surgery import remove_hooks


@register_method("lame")
class Lame(Method):
    """The batch's class assignments refined by Laplacian-regularized maximum likelihood.

    Boudiaf et al. CVPR 2022, "Parameter-free online test-time adaptation" (official ``fiveai/LAME``,
    ``src/adaptation/lame.py``; as ``mariodoebler/test-time-adaptation``, ``classification/methods/lame.py``).
    Forward-only and output-level: the adapted model (over whatever policy) predicts ``p``; with
    ``unary = -log(p + 1e-10)`` and an affinity ``W`` between the L2-normalized features entering the
    classifier, ``Y`` iterates ``softmax(-unary + W Y)`` from ``Y = p`` until the energy settles (at most
    100 steps; :func:`tta.laplacian.lame_refinement`). The output is ``log Y``, so it reads as logits. No
    parameter changes and no gradient flows. The features are the input of the model's last ``nn.Linear``
    (its classifier), read by a forward pre-hook that :func:`tta.detach` removes; a model without one is
    refused. While paused the policy layers update nothing and LAME still refines: it holds no state, the
    refinement is the prediction.

    Args:
        affinity: how ``W`` weighs a pair of samples. ``"knn"``: 1 to each sample's ``knn`` nearest others,
            0 elsewhere (the LAME authors' best overall setting). ``"rbf"``: ``exp(-d^2 / 2 sigma^2)`` for
            every pair, ``sigma`` the mean distance to the ``knn``-th nearest sample (the sample itself
            counted). ``"linear"``: the dot products of the normalized features.
        knn: the number of neighbours of ``"knn"``, and the neighbour that sets the ``"rbf"`` bandwidth, >= 1.
        force_symmetry: use ``(W + W^T) / 2`` instead of ``W`` (a kNN affinity is not symmetric).

    See :doc:`/methods/lame` (the rule, the choice of default affinity, when to use it).
    """

    output_level = True

    def __init__(
        self,
        model: nn.Module,
        *,
        affinity: Annotated[str, Choice("knn", "rbf", "linear")] = "knn",
        knn: Annotated[int, Range(1)] = 5,
        force_symmetry: bool = False,
    ) -> None:
        super().__init__(model)
        _, self.capture = capture_classifier_input(model, "lame reads the features entering the classifier,")
        self.affinity, self.knn, self.force_symmetry = affinity, knn, force_symmetry

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        return self.predict(x)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """LAME's ``log Y`` for the adapted model's logits of ``x``, from one forward."""
        logits, features = self.capture.logits_and_features(lambda: self.check_logits(self.model(x), len(x)), "lame")
        return self.refine(logits, cast(Tensor, features))

    def refine(self, logits: Tensor, features: Tensor) -> Tensor:
        """``log Y`` of LAME for this batch's logits and classifier inputs; a non-finite row is left out and
        returned as the model gave it (:func:`tta.laplacian.lame_refinement`)."""
        return lame_refinement(logits, features, self.affinity, self.knn, self.force_symmetry)

    def release(self, keep_adapted: bool = False) -> nn.Module:
        remove_hooks(self.model, FeatureCapture)
        return super().release(keep_adapted)
