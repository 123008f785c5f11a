"""``balanced`` (docs/policies/balanced.md): the official per-class step and coupling worked by hand, the class-balanced
mixture, the order of forwards (predict, then update with those labels), its cost, defaults and errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tta
from tests.tta.conftest import build, give_source_statistics, inputs
from tta.policies.balanced import BalancedBatchNorm


def layer_1d(num_classes: int = 3, **options: float) -> BalancedBatchNorm:
    """One channel, source mean 0 and variance 1, no affine transform: outputs are the normalized values."""
    return BalancedBatchNorm(nn.BatchNorm1d(1, affine=False).eval(), num_classes=num_classes, **options)


def update(layer: BalancedBatchNorm, x: torch.Tensor, labels: list[int]) -> torch.Tensor:
    """One updating call as the model's hook makes it: labels set, then the layer's forward."""
    layer.labels = torch.tensor(labels)
    with torch.no_grad():
        return layer(x)


# Batch of four one-value samples: 1, 2, 3 predicted class 0, 5 predicted class 1; class 2 absent.
X = torch.tensor([[1.0], [2.0], [3.0], [5.0]])
LABELS = [0, 0, 0, 1]


def test_a_class_with_more_than_one_over_eta_samples_steps_by_one_over_n_else_by_eta() -> None:
    layer = layer_1d(eta=0.4)  # 1/eta = 2.5: class 0 (n = 3) steps by 1/3, class 1 (n = 1) by 0.4
    out = update(layer, X, LABELS)
    # class 0, m = 1/3: delta = (1+2+3)/3 = 2 -> mean 2; var = 1 + (1/3)(1+4+9 - 3*1) - 2^2 = 2/3,
    # the mean and biased variance of 1, 2, 3. Class 1, m = 0.4: delta = 0.4*5 = 2 -> mean 2;
    # var = 1 + 0.4(25 - 1) - 2^2 = 6.6 (the EMA 0.6*1 + 0.4*0.6*25). Class 2: untouched (0, 1).
    torch.testing.assert_close(layer.class_mean, torch.tensor([[2.0], [2.0], [0.0]]))
    torch.testing.assert_close(layer.class_var, torch.tensor([[2 / 3], [6.6], [1.0]]))
    # mixture: mean (2+2+0)/3 = 4/3; var (2/3 + 6.6 + 1)/3 + unbiased var of (2, 2, 0) = 124/45 + 4/3 = 184/45
    mean, var = layer.adapted_stats()
    torch.testing.assert_close(mean, torch.tensor([4 / 3]))
    torch.testing.assert_close(var, torch.tensor([184 / 45]))
    torch.testing.assert_close(out, (X - 4 / 3) / torch.sqrt(torch.tensor(184 / 45 + 1e-5)))


def test_gamma_couples_every_class_to_the_mean_step_of_the_present_ones() -> None:
    layer = layer_1d(eta=0.4, gamma=0.5)
    update(layer, X, LABELS)
    # delta_0 = delta_1 = 2 (above); means: mu_k += 0.5 delta_k, then all += 0.5 * mean(2, 2) = 1
    torch.testing.assert_close(layer.class_mean, torch.tensor([[2.0], [2.0], [1.0]]))
    # own step, halved: var_0 = 1 + 0.5(1/3 * 11 - 4) = 5/6, var_1 = 1 + 0.5(0.4 * 24 - 4) = 3.8, var_2 = 1;
    # gap = mean(14/3 - 4, 0.4*25 - 4) = 10/3, mean(m n) = mean(1, 0.4) = 0.7; var += 0.5(10/3 - 0.7 var):
    # var_0 = 53/24, var_1 = 1241/300, var_2 = 139/60
    torch.testing.assert_close(layer.class_var, torch.tensor([[53 / 24], [1241 / 300], [139 / 60]]))


def test_the_class_step_uses_every_spatial_value_of_a_sample() -> None:
    layer = BalancedBatchNorm(nn.BatchNorm2d(1, affine=False).eval(), num_classes=2, eta=0.5)
    x = torch.tensor([1.0, 3.0, 1.0, 3.0]).view(1, 1, 2, 2)  # one sample, spatial mean 2, variance 1
    update(layer, x, [1])
    # m = 0.5: delta = 0.5 * (2 - 0) = 1; s = mean of x^2 = 5; var = 1 + 0.5(5 - 1) - 1 = 2
    torch.testing.assert_close(layer.class_mean, torch.tensor([[0.0], [1.0]]))
    torch.testing.assert_close(layer.class_var, torch.tensor([[1.0], [2.0]]))


def test_a_layer_called_without_labels_normalizes_with_the_mixture_and_updates_nothing() -> None:
    layer = layer_1d(eta=0.4)
    update(layer, X, LABELS)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    with torch.no_grad():
        out = layer(X)
    torch.testing.assert_close(out, (X - 4 / 3) / torch.sqrt(torch.tensor(184 / 45 + 1e-5)))
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in state.items())


def classifier_1d() -> nn.Module:
    """Two channels into BatchNorm1d, then a 3-class linear head."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 3))
    return give_source_statistics(model)


def test_the_prediction_is_the_pre_update_forward_and_its_argmax_labels_the_update() -> None:
    model = tta.adapt(classifier_1d(), "balanced", eta=1.0)  # eta = 1: a class takes its samples' mean
    before = copy.deepcopy(model)
    x = torch.randn(12, 2, generator=torch.Generator().manual_seed(0)) * 2 + 1
    with torch.no_grad():
        out = model(x)
        with tta.paused(before):
            expected = before(x)
    assert torch.equal(out, expected)  # the returned forward normalized with the state before this batch
    labels = expected.argmax(1)
    source_mean = before[0].source_mean
    for k in range(3):
        chosen = x[labels == k]
        want = chosen.mean(0) if len(chosen) else source_mean
        torch.testing.assert_close(model[0].class_mean[k], want)
    assert len(set(labels.tolist())) > 1  # the check above covers several classes


def test_each_adapting_call_costs_two_forwards_and_a_paused_one_one() -> None:
    model = tta.adapt(build("small_cnn"), "balanced")
    calls = []
    model[-1].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(inputs("small_cnn", 4))
        assert len(calls) == 2
        with tta.paused(model):
            model(inputs("small_cnn", 4))
    assert len(calls) == 3


def test_defaults_follow_the_official_configs_with_the_number_of_classes() -> None:
    """TRIBE's configs: eta 0.01 / 0.05 / 0.5 and gamma 0 / 0.1 / 0.5 for 10 / 100 / 1000 classes."""
    for classes, eta, gamma in [(10, 0.01, 0.0), (100, 0.05, 0.1), (1000, 0.5, 0.5), (2, 0.01, 0.0)]:
        model = give_source_statistics(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, classes)))
        layer = tta.adapt(model, "balanced")[1]
        assert (layer.num_classes, layer.eta, layer.gamma) == (classes, pytest.approx(eta), gamma)
        assert layer.class_mean.shape == (classes, 4)


def test_a_model_without_a_linear_classifier_needs_num_classes() -> None:
    model = give_source_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match="has none; pass num_classes=K"):
        tta.adapt(model, "balanced")
    assert not tta.policy_layers(model)


def test_an_output_that_is_not_batch_by_classes_logits_is_named() -> None:
    model = tta.adapt(build("small_cnn"), "balanced", num_classes=5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"needs \(batch, 5\) logits from the model; it returned \(4, 10\)"):
        with torch.no_grad():
            model(inputs("small_cnn", 4))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_detach_removes_the_hook_of_the_model_and_of_a_copy_only_from_that_copy() -> None:
    model = tta.adapt(build("small_cnn"), "balanced")
    copied = copy.deepcopy(model)
    tta.detach(copied)
    assert not copied._forward_hooks and len(model._forward_hooks) == 1
    tta.detach(model)
    assert not model._forward_hooks
    tta.adapt(model, "balanced")  # attaches again, one hook
    assert len(model._forward_hooks) == 1


def test_the_non_finite_output_of_a_bad_batch_updates_nothing() -> None:
    model = tta.adapt(build("small_cnn"), "balanced")
    x = inputs("small_cnn", 4)
    x[2] = float("nan")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_detach_keep_adapted_bakes_the_mixture_and_removes_the_hook() -> None:
    model = tta.adapt(build("small_cnn"), "balanced", eta=0.5)
    with torch.no_grad():
        model(inputs("small_cnn", 8))
    layer = model[1]
    mean = layer.class_mean.mean(0)
    var = layer.class_var.mean(0) + layer.class_mean.var(0)
    baked = tta.detach(model, keep_adapted=True)
    torch.testing.assert_close(baked[1].running_mean, mean)
    torch.testing.assert_close(baked[1].running_var, var)
    assert not baked._forward_hooks and not tta.policy_layers(baked)
