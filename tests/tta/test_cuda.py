"""On a GPU every policy gives what it gives on the CPU: outputs, state, the NaN guard (the branch-free
``torch.where`` path of ``commit``), autograd, casts, detach and compile. Skipped without CUDA."""

from __future__ import annotations

import copy

import pytest
import torch

import tta
from tests.tta.conftest import build, inputs

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
    pytest.mark.usefixtures("full_float32_precision"),  # tests/tta/conftest.py
]
POLICIES = tta.list_policies()


def batches(model_name: str) -> list[torch.Tensor]:
    out = [inputs(model_name, 4, seed) for seed in range(4)]
    out[2] = out[2].clone()
    out[2].view(-1)[5] = float("nan")  # a non-finite batch: must leave the state untouched on both
    return out


@pytest.mark.parametrize("policy", POLICIES)
def test_cuda_matches_cpu_outputs_and_state(policy: str, model_name: str) -> None:
    cpu = tta.adapt(build(model_name), policy)
    gpu = tta.adapt(build(model_name), policy).cuda()
    with torch.no_grad():
        for x in batches(model_name):
            torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-3, atol=1e-3, equal_nan=True)
    for (name, a), b in zip(gpu.state_dict().items(), cpu.state_dict().values()):
        assert a.device.type == "cuda" and a.dtype == b.dtype, name
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5, msg=name)
    tta.reset(gpu)
    tta.reset(cpu)
    for a, b in zip(gpu.state_dict().values(), cpu.state_dict().values()):
        assert torch.equal(a.cpu(), b)


@pytest.mark.parametrize("policy", POLICIES)
def test_cuda_autograd_through_two_forwards_cast_and_detach(policy: str) -> None:
    original = build("small_cnn")
    model = tta.adapt(copy.deepcopy(original), policy).cuda()
    x = inputs("small_cnn", 4).cuda().requires_grad_()
    (model(x).sum() + model(x).sum()).backward()
    assert torch.isfinite(x.grad).all()
    detached = tta.detach(model.double()).cpu()
    for (name, a), b in zip(detached.state_dict().items(), original.double().state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name


@pytest.mark.parametrize("policy", POLICIES)
def test_cuda_compile_has_no_graph_break(policy: str) -> None:
    torch._dynamo.reset()
    model = tta.adapt(build("small_cnn"), policy).cuda()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(inputs("small_cnn", 4).cuda())
    assert explanation.graph_break_count == 0, explanation.break_reasons
