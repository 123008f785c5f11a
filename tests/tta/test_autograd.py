"""Autograd through any number of forwards (spec M0: statistics without gradient, affine with it)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tta
from tests.tta.conftest import build, give_source_statistics, inputs, with_classifier

POLICIES = tta.list_policies()


def gradients(model: nn.Module, *xs: torch.Tensor) -> list[torch.Tensor]:
    return [x.grad for x in xs] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("policy", POLICIES)
def test_two_forwards_in_one_loss_give_the_sum_of_their_separate_gradients(policy: str, model_name: str) -> None:
    """One backward through two adapting forwards equals two backwards, each right after its forward:
    each forward's gradient uses the statistics that forward normalized with, whatever came after."""
    batches = [inputs(model_name, 4, seed).requires_grad_() for seed in (0, 1)]
    together = tta.adapt(build(model_name), policy)
    sum(together(x).square().sum() for x in batches).backward()

    separate = tta.adapt(build(model_name), policy)
    expected_inputs = [x.detach().clone().requires_grad_() for x in batches]
    for x in expected_inputs:
        separate(x).square().sum().backward()

    for got, expected in zip(gradients(together, *batches), gradients(separate, *expected_inputs)):
        assert got is not None and expected is not None
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(together.state_dict().items(), separate.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_layer_reached_twice_in_one_forward_backpropagates(policy: str) -> None:
    bn = nn.BatchNorm2d(4)
    model = give_source_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), bn, nn.ReLU(), bn))
    model = tta.adapt(with_classifier(model, policy, 4 * 6 * 6), policy)
    x = torch.randn(6, 3, 8, 8, requires_grad=True)
    loss = model(x).sum() + model(x).sum()
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # a second loss from the already updated state, and its backward, still work
    model(x).sum().backward()


def test_the_issue_reproduction_runs_for_every_policy() -> None:
    for policy in POLICIES:
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4).eval())
        model = tta.adapt(with_classifier(model, policy, 4 * 6 * 6), policy)
        x = torch.randn(8, 3, 8, 8, requires_grad=True)
        (model(x).sum() + model(x).sum()).backward()
