"""On a GPU every method over every policy learns what it learns on the CPU; the learner moves with its
optimizer state (and RoTTA with its teacher and memory). Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

import tta
from tests.tta.conftest import inputs
from tests.tta.methods.conftest import learner

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
    pytest.mark.usefixtures("full_float32_precision"),  # tests/tta/conftest.py
]


@pytest.mark.parametrize("method", tta.list_methods())
@pytest.mark.parametrize("policy", tta.list_policies())
def test_cuda_learner_matches_cpu(policy: str, method: str) -> None:
    options = {"update_frequency": 8} if method == "rotta" else {}  # memory updates within the test
    cpu = learner("small_cnn", policy, method, **options)
    gpu = learner("small_cnn", policy, method, **options)
    for seed in range(2):  # one batch on the CPU first: the optimizer state must move with the learner
        x = inputs("small_cnn", 4, seed)
        gpu(x)
        cpu(x)
    gpu.cuda()
    for seed in range(2, 5):
        x = inputs("small_cnn", 4, seed)
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-3, atol=1e-3)
    for (name, a), b in zip(gpu.state_dict().items(), cpu.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert a.device.type == "cuda", name
            torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-4, msg=name)
    tta.reset(gpu)
    tta.reset(cpu)
    detached = tta.detach(gpu).cpu()
    for a, b in zip(detached.state_dict().values(), tta.detach(cpu).state_dict().values()):
        assert torch.equal(a, b)
