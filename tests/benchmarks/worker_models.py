"""Test models for ``--workers``: ``crash_under_rbn`` ends its process at once (as a worker killed for
memory would) when it runs adapted with ``rbn`` in a worker process, never in the driver, and leaves a
file in ``attempts_dir`` each time; ``unpicklable`` cannot be sent to a worker process."""

from __future__ import annotations

import multiprocessing
import os
import tempfile

import torch
from torch import nn

from tta_bench.models import load_bundled_model


class CrashUnderRbn(nn.Module):
    def __init__(self, attempts_dir: str) -> None:
        super().__init__()
        self.net = load_bundled_model()
        self.attempts_dir = attempts_dir

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_worker = multiprocessing.parent_process() is not None
        if in_worker and any(type(module).__name__ == "RobustBatchNorm" for module in self.modules()):
            os.close(tempfile.mkstemp(dir=self.attempts_dir)[0])
            os._exit(1)
        return self.net(x)


def crash_under_rbn(attempts_dir: str) -> CrashUnderRbn:
    return CrashUnderRbn(attempts_dir).eval()


def unpicklable() -> nn.Module:
    model = load_bundled_model().eval()
    model.describe = lambda: "a lambda, which pickle cannot send"
    return model
