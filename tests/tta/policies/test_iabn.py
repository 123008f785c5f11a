"""``iabn`` (docs/policies/iabn.md): the instance statistics shrunk towards the layer statistics, and the
running estimate."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tta
from tests.tta.policies.conftest import EPS, batch, by_hand, source_layer


def shrink(d: float, threshold: float) -> float:
    """Soft-thresholding written out case by case."""
    if d > threshold:
        return d - threshold
    if d < -threshold:
        return d + threshold
    return 0.0


def iabn_by_loops(x: torch.Tensor, mean_b: torch.Tensor, var_b: torch.Tensor, bn: nn.Module, k: float) -> torch.Tensor:
    """Spec M12 instance by instance and channel by channel, in float64."""
    out = torch.empty_like(x, dtype=torch.float64)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            values = x[b, c].double().flatten()
            length = values.numel()
            mu_i = values.sum().item() / length
            var_i = ((values - mu_i) ** 2).sum().item() / (length - 1)  # unbiased, as the official code
            mb, vb = mean_b[c].item(), var_b[c].item()
            s_mu = math.sqrt((vb + EPS) / length)
            s_var = (vb + EPS) * math.sqrt(2 / (length - 1))
            mu = mb + shrink(mu_i - mb, k * s_mu)
            var = max(0.0, vb + shrink(var_i - vb, k * s_var))
            out[b, c] = (x[b, c].double() - mu) / math.sqrt(var + EPS) * bn.weight[c].item() + bn.bias[c].item()
    return out.to(x.dtype)


@pytest.mark.parametrize("k", [1.0, 4.0])
@pytest.mark.parametrize("dims, shape", [(2, (5, 4, 4, 6)), (1, (5, 4, 7)), (3, (3, 4, 2, 3, 3))])
def test_iabn_from_source_statistics_matches_the_equations_written_with_loops(
    dims: int, shape: tuple[int, ...], k: float
) -> None:
    bn = source_layer(dims=dims)
    layer = tta.adapt(source_layer(dims=dims), "iabn", k=k, stats="source")
    for seed in range(2):
        x = batch(shape, seed, shift=0.5 * seed)
        expected = iabn_by_loops(x, bn.running_mean, bn.running_var, bn, k)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_iabn_shrinks_some_deviations_to_zero_and_keeps_others_in_these_cases() -> None:
    """The loop test above covers both branches of the soft threshold (else it would test little)."""
    bn = source_layer()
    x = batch((5, 4, 4, 6), 0)
    mean_i = x.mean(dim=(2, 3))
    threshold = 4.0 * torch.sqrt((bn.running_var + EPS) / 24)
    inside = (mean_i - bn.running_mean).abs() <= threshold
    assert inside.any() and not inside.all()


def test_iabn_running_statistics_are_pytorch_s_ema_applied_after_normalizing() -> None:
    """NOTE predicts with the running estimate, then its BatchNorm updates it in train mode."""
    m, k = 0.2, 2.0
    bn = source_layer()
    layer = tta.adapt(source_layer(), "iabn", k=k, momentum=m)
    reference = source_layer()
    reference.momentum = m
    reference.train()
    for seed in range(3):
        x = batch((6, 4, 5, 5), seed, shift=0.4 * seed)
        expected = iabn_by_loops(x, reference.running_mean, reference.running_var, bn, k)  # before the update
        out = layer(x)
        reference(x)  # PyTorch's running update: momentum m, unbiased batch variance
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.running_mean, reference.running_mean)
        torch.testing.assert_close(layer.running_var, reference.running_var)


def test_iabn_without_spatial_extent_uses_the_layer_statistics() -> None:
    """``L <= 1``: BatchNorm1d on (B, C), and (B, C, 1), normalize with ``(mu_b, var_b)``."""
    bn = source_layer(dims=1)
    for x in [batch((6, 4), 1), batch((6, 4, 1), 2)]:
        assert torch.equal(tta.adapt(source_layer(dims=1), "iabn", stats="source")(x), bn(x))
    layer = tta.adapt(source_layer(dims=1), "iabn", momentum=0.5)
    x = batch((6, 4), 3)
    assert torch.equal(layer(x), bn(x))  # the running estimate before this batch: the source
    torch.testing.assert_close(layer.running_mean, 0.5 * bn.running_mean + 0.5 * x.mean(0))
    mean, var = layer.running_mean.clone(), layer.running_var.clone()
    torch.testing.assert_close(layer(x), by_hand(x, mean, var, bn))


def test_iabn_with_a_huge_k_normalizes_with_the_layer_statistics() -> None:
    x = batch((4, 4, 5, 5), 4, shift=3.0, scale=4.0)
    layer = tta.adapt(source_layer(), "iabn", k=1e12, stats="source")
    torch.testing.assert_close(layer(x), source_layer()(x), rtol=1e-5, atol=1e-5)


def test_iabn_with_k_zero_is_instance_normalization_with_unbiased_variance() -> None:
    bn = source_layer()
    layer = tta.adapt(source_layer(), "iabn", k=0.0)
    for seed in range(2):
        x = batch((3, 4, 5, 6), seed)
        mean = x.mean(dim=(2, 3))
        var = x.var(dim=(2, 3), unbiased=True)  # the official torch.var_mean(..., unbiased=True)
        torch.testing.assert_close(layer(x), by_hand(x, mean, var, bn), rtol=1e-5, atol=1e-5)
