"""A test model for ``--model tests.benchmarks.flaky_model:build``: the bundled model, except that it
raises on bright batches (mean pixel above 0.45: Fashion-MNIST ``brightness`` at severity 5, never its
clean or ``contrast`` images). Each raise leaves a file in ``attempts_dir``, so a test counts attempts
across worker processes."""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn

from benchmarks.models import load_bundled_model

BRIGHT = 0.45


class Flaky(nn.Module):
    def __init__(self, attempts_dir: str, always: bool) -> None:
        super().__init__()
        self.net = load_bundled_model()
        self.attempts_dir = attempts_dir
        self.always = always

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.mean()) > BRIGHT and self._fails():
            raise RuntimeError("injected failure on a bright batch")
        return self.net(x)

    def _fails(self) -> bool:
        if self.always:
            os.close(tempfile.mkstemp(dir=self.attempts_dir)[0])
            return True
        try:  # only the first bright batch of all processes fails
            os.close(os.open(os.path.join(self.attempts_dir, "failed-once"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True


def build(attempts_dir: str, always: bool = True) -> Flaky:
    return Flaky(attempts_dir, always).eval()
