"""A test model for ``--model tests.benchmarks.flaky_model:build``: the bundled model, except that it
fails on bright batches (mean pixel above 0.45: Fashion-MNIST ``brightness`` at severity 5, never its
clean or ``contrast`` images): it raises, or with ``crash`` ends its process at once (as a worker killed
for memory would). Each failure leaves a file in ``attempts_dir``, so a test counts attempts across
worker processes; with ``always=False`` only the first bright batch of all processes fails."""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn

from tta_bench.models import load_bundled_model

BRIGHT = 0.45


class Flaky(nn.Module):
    def __init__(self, attempts_dir: str, always: bool, crash: bool) -> None:
        super().__init__()
        self.net = load_bundled_model()
        self.attempts_dir = attempts_dir
        self.always = always
        self.crash = crash

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.mean()) > BRIGHT and self._fails():
            if self.crash:
                os._exit(1)
            raise RuntimeError("injected failure on a bright batch")
        return self.net(x)

    def _fails(self) -> bool:
        if self.always:
            os.close(tempfile.mkstemp(dir=self.attempts_dir)[0])
            return True
        try:
            os.close(os.open(os.path.join(self.attempts_dir, "failed-once"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True


def build(attempts_dir: str, always: bool = True, crash: bool = False) -> Flaky:
    return Flaky(attempts_dir, always, crash).eval()
