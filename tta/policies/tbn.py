"""``tbn``: test-time batch normalization, each batch by its own statistics. See :doc:`/policies/tbn`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tta.policies.base import NormPolicy
from tta.registry import register_policy
from tta.stats import batch_moments, elements_per_channel


@register_policy("tbn")
class TestBatchNorm(NormPolicy):
    """Normalize with the current batch's mean and biased variance; no state.

    Schneider et al. NeurIPS 2020, "Improving robustness against common corruptions by covariate shift
    adaptation"; Nado et al. 2020, "Evaluating prediction-time batch normalization for robustness under
    covariate shift". Rule: ``mu = mu_B``, ``var = var_B`` (biased), the output of train-mode BatchNorm
    on the same batch. With B = 1 on spatial inputs this is instance normalization; with a single value
    per channel (n = 1) the source statistics are used for that call (:doc:`/reference/notation`).

    By default the statistics carry no gradient; with ``stats_grad`` set (by :doc:`/methods/tent`) the
    gradient flows through the batch mean and variance exactly as in train-mode BatchNorm.

    Across processes (a SyncBatchNorm layer, ``NormPolicy`` doc): batch statistics, combined
    over every process's batch. With ``stats_grad`` the gradient flows through the all-reduce to every
    process's input, as in SyncBatchNorm's backward; ``weight`` and ``bias`` get each process's own
    part of their gradient, as there (summing them over processes is the data-parallel wrapper's job).

    No options. See :doc:`/policies/tbn`.
    """

    combines_across_processes = True

    def normalize(self, x: Tensor) -> Tensor:
        if self.sync_batchnorm and self.syncing():
            return self.normalize_across_processes(x)
        if elements_per_channel(x) < 2:
            return self.normalize_with_source(x)
        if torch.is_grad_enabled() and x.requires_grad and not self.stats_grad:
            # Statistics carry no gradient by default; only weight and bias do.
            mean, var, _ = batch_moments(x, self.stats_dtype)
            return self.normalize_with(x, mean, var)
        # Fused kernel: batch statistics and normalization in one call (with stats_grad, its backward
        # is train-mode BatchNorm's, through the statistics).
        return F.batch_norm(x, None, None, *self.affine(), True, 0.0, self.eps)

    def normalize_across_processes(self, x: Tensor) -> Tensor:
        """Normalize with the statistics of every process's batch together (class doc)."""
        mean, var, n = self.batch_moments(x, grad=self.grad_through_stats(x))
        return self.normalize_with_source(x) if n < 2 else self.normalize_with(x, mean, var)
