"""Tent's update against hand-written steps and against a plain reimplementation of the official code
(docs/methods/tent.md): entropy gradient, Adam, affine parameters only, the pre-step prediction, episodic, steps."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import tta
from tests.tta.conftest import build, inputs
from tests.tta.methods.conftest import assert_same, entropy, learner

POLICIES = tta.list_policies()


def hand_tent(
    model_name: str, policy: str, xs: list[torch.Tensor], lr: float, betas: tuple[float, float], weight_decay: float
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Tent written out: forward, entropy, torch.autograd gradient, Adam's equations by hand.

    The reference is a plainly adapted model whose layers let the gradient through their batch
    statistics (the switch Tent sets); the step never goes through tta.methods.
    """
    model = tta.adapt(build(model_name), policy).requires_grad_(False)  # only the affine parameters train
    layers = [layer for _, layer in tta.policy_layers(model)]
    for layer in layers:
        layer.stats_grad = True
    params = [p.requires_grad_() for layer in layers for p in (layer.weight, layer.bias)]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    (beta1, beta2), eps = betas, 1e-8
    outputs = []
    for t, x in enumerate(xs, start=1):
        out = model(x)
        grads = torch.autograd.grad(entropy(out), params)
        with torch.no_grad():
            for p, g, m_i, v_i in zip(params, grads, m, v):
                g = g + weight_decay * p
                m_i.mul_(beta1).add_((1 - beta1) * g)
                v_i.mul_(beta2).add_((1 - beta2) * g * g)
                # m_hat / (sqrt(v_hat) + eps), the bias corrections arranged as torch.optim.Adam does
                p.sub_(lr / (1 - beta1**t) * m_i / (v_i.sqrt() / (1 - beta2**t) ** 0.5 + eps))
        outputs.append(out.detach())
    return outputs, [p.detach() for p in params]


@pytest.mark.parametrize("policy", POLICIES)
def test_each_step_is_adam_on_the_entropy_of_the_pre_step_prediction(policy: str, model_name: str) -> None:
    xs = [inputs(model_name, 6, seed) for seed in range(3)]
    expected_out, expected_params = hand_tent(model_name, policy, xs, 1e-3, (0.9, 0.999), 0.0)
    tent = learner(model_name, policy)
    before = {name: p.detach().clone() for name, p in tent.model.named_parameters()}
    with torch.no_grad():
        outs = [tent(x) for x in xs]
    for got, want in zip(outs, expected_out):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    affine = {id(p) for p in tent.params}
    assert len(affine) == 2 * len(tent.layers)
    for got, want in zip(tent.params, expected_params):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    for name, p in tent.model.named_parameters():
        if id(p) in affine:
            assert not torch.equal(p, before[name]), f"{name} did not train"
        else:
            assert torch.equal(p, before[name]), f"{name} is not an affine parameter but changed"
    assert int(tent.updates) == 3


def test_the_options_reach_adam() -> None:
    xs = [inputs("small_cnn", 5, seed) for seed in range(3)]
    expected_out, expected_params = hand_tent("small_cnn", "rbn", xs, 5e-3, (0.5, 0.9), 0.1)
    tent = learner("small_cnn", "rbn", lr=5e-3, beta1=0.5, beta2=0.9, weight_decay=0.1)
    for x, want in zip(xs, expected_out):
        torch.testing.assert_close(tent(x), want, rtol=1e-5, atol=1e-6)
    for got, want in zip(tent.params, expected_params):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


def test_the_first_prediction_is_the_adapted_model_before_any_step() -> None:
    x = inputs("resnet18", 4, 0)
    plain = tta.adapt(build("resnet18"), "tbn")
    with torch.no_grad():
        assert torch.equal(learner("resnet18", "tbn")(x), plain(x))


class OfficialTent(nn.Module):
    """The official method (DequanWang/tent) written plainly: the whole model in train mode, BatchNorm
    without running statistics (batch statistics, with their gradient), Adam on the BatchNorm affine
    parameters, mean softmax entropy, one step per batch, episodic reset before adapting."""

    def __init__(self, model: nn.Module, episodic: bool = False) -> None:
        super().__init__()
        self.model = model.train().requires_grad_(False)
        params = []
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.requires_grad_(True)
                m.track_running_stats, m.running_mean, m.running_var = False, None, None
                params += [m.weight, m.bias]
        self.optimizer = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
        self.episodic = episodic
        self.saved = copy.deepcopy((model.state_dict(), self.optimizer.state_dict()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.episodic:
            self.model.load_state_dict(self.saved[0])
            self.optimizer.load_state_dict(copy.deepcopy(self.saved[1]))
        with torch.enable_grad():
            out = self.model(x)
            entropy(out).backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
        return out.detach()


@pytest.mark.parametrize("episodic", [False, True])
def test_over_tbn_equals_the_official_method(model_name: str, episodic: bool) -> None:
    official = OfficialTent(build(model_name), episodic=episodic)
    tent = learner(model_name, "tbn", episodic=episodic)
    worst = 0.0
    with torch.no_grad():
        for seed in range(5):
            x = inputs(model_name, 8, seed)
            worst = max(worst, (tent(x) - official(x)).abs().max().item())
    assert worst <= 1e-5
    assert not tent.training  # the learner stayed in eval mode throughout


def test_without_the_statistics_gradient_tbn_would_differ_from_the_official_method() -> None:
    """The check above has teeth: detaching tbn's statistics changes the update."""
    official = OfficialTent(build("small_cnn"))
    tent = learner("small_cnn", "tbn")
    for layer in tent.layers:
        layer.stats_grad = False
    with torch.no_grad():
        gaps = [(tent(x) - official(x)).abs().max().item() for x in (inputs("small_cnn", 8, s) for s in range(3))]
    assert gaps[0] < 1e-6 and gaps[-1] > 1e-4  # the same first prediction, then apart


def test_several_steps_return_the_last_forward_before_its_step() -> None:
    x = inputs("small_cnn", 6, 0)
    two_steps = learner("small_cnn", "tbn", steps=2)
    one_step = learner("small_cnn", "tbn")
    first = one_step(x)
    second = one_step(x)  # the same batch again: what the second step forwards
    torch.testing.assert_close(two_steps(x), second, rtol=0, atol=0)
    assert not torch.equal(first, second)
    for a, b in zip(two_steps.params, one_step.params):
        assert torch.equal(a, b)
    assert int(two_steps.updates) == 2


def test_episodic_resets_before_adapting_so_each_batch_starts_from_the_source() -> None:
    xs = [inputs("small_cnn", 4, seed) for seed in range(3)]
    episodic = learner("small_cnn", "rbn", episodic=True)
    outs = [episodic(x) for x in xs]
    for x, out in zip(xs, outs):
        assert torch.equal(out, learner("small_cnn", "rbn")(x))
    # the step of the last batch is kept until the next batch comes
    assert int(episodic.updates) == 1
    assert any(not torch.equal(p, q) for p, q in zip(episodic.params, learner("small_cnn", "rbn").params))


def test_a_non_finite_batch_skips_the_step_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    tent, fresh = learner("small_cnn", "tbn"), learner("small_cnn", "tbn")
    bad = inputs("small_cnn", 4, 0)
    bad[0, 0, 0, 0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="tta.methods.base"):
        tent(bad)
    assert "non-finite" in caplog.text
    assert int(tent.updates) == 0 and all(torch.isfinite(p).all() for p in tent.params)
    x = inputs("small_cnn", 4, 1)
    assert torch.equal(tent(x), fresh(x))


class DetachedOutput(nn.Module):
    """A model whose forward hands back its output cut from autograd."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).detach()


@pytest.mark.parametrize("method", ["tent", "rotta"])
def test_a_model_whose_output_has_no_gradient_is_an_error_not_a_silent_no_op(method: str) -> None:
    model = tta.attach_method(tta.adapt(DetachedOutput(build("small_cnn")), "rbn"), method)
    with pytest.raises(RuntimeError, match=f"{method}: the loss carries no gradient to the affine parameters"):
        for seed in range(3):  # RoTTA steps once its memory has seen 64 samples
            model(inputs("small_cnn", 32, seed))


def test_a_step_that_makes_the_parameters_non_finite_is_undone_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Adam moves each parameter by about ``lr`` per step: with an optimizer set to 1e308 the step gives
    inf, so the parameters and the optimizer state go back to their values before it."""
    tent = learner("small_cnn", "rbn")
    tent(inputs("small_cnn", 4, 0))
    params, state = copy.deepcopy((tent.params, tent.optimizer.state_dict()["state"]))
    tent.optimizer.param_groups[0]["lr"] = 1e308
    with caplog.at_level(logging.WARNING, logger="tta.methods.base"):
        tent(inputs("small_cnn", 4, 1))
    assert "non-finite" in caplog.text and int(tent.updates) == 1
    for p, before in zip(tent.params, params):
        assert torch.equal(p, before)
    assert_same(tent.optimizer.state_dict()["state"], state)
    assert torch.isfinite(tent(inputs("small_cnn", 4, 2))).all()
