"""``adab2n`` (docs/policies/adab2n.md): the momentum recursion and its limits."""

from __future__ import annotations

import copy

import pytest
import torch

import tta
from tests.tta.policies.conftest import batch, by_hand, channel_dims, source_layer


def test_adab2n_with_kappa_one_is_an_ema_with_constant_momentum() -> None:
    m = 0.2
    bn = source_layer()
    layer = tta.adapt(source_layer(), "adab2n", momentum=m, kappa=1.0)
    reference = source_layer()
    reference.momentum = m
    reference.train()
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    for t in range(1, 5):
        x = batch((6, 4, 5, 5), t)
        out = layer(x)
        reference(x)  # PyTorch's own EMA of the batch means with momentum m
        dims = channel_dims(x)
        mean = (1 - m) * mean + m * x.mean(dims)
        var = (1 - m) * var + m * x.var(dims, unbiased=False)  # biased, as the official code
        assert layer.step.item() == t and layer.eta.item() == m
        torch.testing.assert_close(layer.running_mean, reference.running_mean)
        torch.testing.assert_close(layer.running_mean, mean)
        torch.testing.assert_close(layer.running_var, var)
        torch.testing.assert_close(out, by_hand(x, mean, var, bn))  # normalized with the updated state


def test_adab2n_with_kappa_zero_is_the_cumulative_mean_of_the_batch_statistics() -> None:
    """``eta_t = 1/t``: the state is the plain mean of the batch means and batch variances (whatever the
    batch sizes), and the source statistics are gone after the first batch."""
    bn = source_layer()
    layer = tta.adapt(source_layer(), "adab2n", kappa=0.0)
    batches = [batch((b, 4, 3, 3), seed, shift=seed) for seed, b in enumerate([3, 7, 2, 5], start=10)]
    for t in range(1, len(batches) + 1):
        out = layer(batches[t - 1])
        means = [b.mean(channel_dims(b)) for b in batches[:t]]
        variances = [b.var(channel_dims(b), unbiased=False) for b in batches[:t]]
        mean, var = sum(means) / t, sum(variances) / t
        assert layer.eta.item() == pytest.approx(1 / t, rel=1e-15)
        torch.testing.assert_close(layer.running_mean, mean)
        torch.testing.assert_close(layer.running_var, var)
        torch.testing.assert_close(out, by_hand(batches[t - 1], mean, var, bn))


def test_adab2n_eta_follows_the_recursion_for_a_middle_kappa() -> None:
    m, kappa = 0.1, 0.4
    # eta_1 = 0.1^0.4 and eta_2 = eta_1 / (eta_1 + 0.9^0.4), worked out by hand
    assert m**kappa == pytest.approx(0.398107, abs=1e-6)
    assert (m**kappa) / (m**kappa + (1 - m) ** kappa) == pytest.approx(0.293408, abs=1e-6)
    bn = source_layer()
    layer = tta.adapt(source_layer(), "adab2n", momentum=m, kappa=kappa)
    mean, var, eta = bn.running_mean.clone(), bn.running_var.clone(), None
    for t in range(1, 7):
        x = batch((5, 4, 4, 4), t, shift=0.2 * t)
        out = layer(x)
        eta = m**kappa if t == 1 else eta / (eta + (1 - m) ** kappa)
        dims = channel_dims(x)
        mean = mean + eta * (x.mean(dims) - mean)
        var = (1 - eta) * var + eta * x.var(dims, unbiased=False)
        assert layer.step.item() == t and layer.eta.item() == pytest.approx(eta, rel=1e-12)
        torch.testing.assert_close(layer.running_mean, mean)
        torch.testing.assert_close(layer.running_var, var)
        torch.testing.assert_close(out, by_hand(x, mean, var, bn))
    assert 0.1 < eta < 0.2  # decreasing from m^kappa towards a floor; not yet 1/t


def test_adab2n_default_momentum_is_the_layer_s_and_one_value_per_channel_updates_nothing() -> None:
    bn = source_layer(dims=1)
    bn.momentum = 0.3
    layer = tta.adapt(copy.deepcopy(bn), "adab2n", kappa=1.0)
    assert layer.momentum == 0.3
    single = batch((1, 4), 1)
    assert torch.equal(layer(single), bn(single))  # n = 1: source statistics, no update
    assert layer.step.item() == 0 and torch.equal(layer.running_mean, bn.running_mean)
    x = batch((6, 4), 2)
    layer(x)
    torch.testing.assert_close(layer.running_mean, 0.7 * bn.running_mean + 0.3 * x.mean(0))
