"""Each policy's equations (spec M1-M7, M9) against statistics recomputed here with plain tensor ops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tta
from tests.tta.conftest import give_source_statistics

EPS = 1e-5


def source_layer(channels: int = 4, dims: int = 2, seed: int = 0) -> nn.Module:
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](channels, eps=EPS)
    return give_source_statistics(bn, seed)


def batch(shape: tuple[int, ...], seed: int, shift: float = 0.7, scale: float = 1.5) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale + shift


def by_hand(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, bn: nn.Module) -> torch.Tensor:
    """``w (x - mean) / sqrt(var + eps) + b``, per channel (1-d stats) or per instance (2-d stats)."""
    view = (1, -1) + (1,) * (x.dim() - 2) if mean.dim() == 1 else (*mean.shape,) + (1,) * (x.dim() - 2)
    channel = (1, -1) + (1,) * (x.dim() - 2)
    return (x - mean.view(view)) / torch.sqrt(var.view(view) + EPS) * bn.weight.view(channel) + bn.bias.view(channel)


def channel_dims(x: torch.Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def test_source_is_the_original_layer_bit_for_bit() -> None:
    bn = source_layer()
    x = batch((5, 4, 6, 6), 1)
    expected = bn(x)
    layer = tta.adapt(bn, "source")
    assert torch.equal(layer(x), expected)


def test_tbn_equals_functional_batch_norm_in_training_mode() -> None:
    bn = source_layer()
    x = batch((5, 4, 6, 6), 1)
    expected = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, EPS)
    manual = by_hand(x, x.mean(channel_dims(x)), x.var(channel_dims(x), unbiased=False), bn)
    layer = tta.adapt(bn, "tbn")
    with torch.no_grad():
        out = layer(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-5)


def test_tbn_with_one_image_is_instance_normalization() -> None:
    bn = source_layer()
    x = batch((1, 4, 6, 6), 2)
    expected = F.instance_norm(x, weight=bn.weight, bias=bn.bias, eps=EPS)
    with torch.no_grad():
        torch.testing.assert_close(tta.adapt(bn, "tbn")(x), expected, rtol=1e-5, atol=1e-5)


def test_alpha_bn_endpoints_and_mix() -> None:
    x = batch((6, 4, 5, 5), 3)
    source_out = source_layer()(x)
    assert torch.equal(tta.adapt(source_layer(), "alpha_bn", alpha=0.0)(x), source_out)

    bn = source_layer()
    dims = channel_dims(x)
    expected = by_hand(x, x.mean(dims), x.var(dims, unbiased=True), bn)
    torch.testing.assert_close(tta.adapt(bn, "alpha_bn", alpha=1.0)(x), expected, rtol=1e-5, atol=1e-5)

    bn = source_layer()
    a = 0.1
    mean = (1 - a) * bn.running_mean + a * x.mean(dims)
    var = (1 - a) * bn.running_var + a * x.var(dims, unbiased=True)
    torch.testing.assert_close(tta.adapt(bn, "alpha_bn")(x), by_hand(x, mean, var, bn), rtol=1e-5, atol=1e-5)


def test_adabn_normalizes_with_statistics_of_everything_seen() -> None:
    bn = source_layer()
    layer = tta.adapt(bn, "adabn")
    batches = [batch((b, 4, 3, 3), seed, shift=seed) for seed, b in enumerate([3, 7, 1, 5], start=10)]
    for t in range(1, len(batches) + 1):
        out = layer(batches[t - 1])
        seen = torch.cat(batches[:t])
        dims = channel_dims(seen)
        mean, var = seen.mean(dims), seen.var(dims, unbiased=False)
        state_mean, state_var = layer.adapted_stats()
        torch.testing.assert_close(state_mean, mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(state_var, var, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, by_hand(batches[t - 1], mean, var, bn), rtol=1e-4, atol=1e-4)


def test_momentum_decay_with_no_decay_matches_pytorch_running_update() -> None:
    m = 0.2
    layer = tta.adapt(source_layer(), "momentum_decay", momentum=m, decay=1.0, min_momentum=0.0)
    reference = source_layer()
    reference.momentum = m
    reference.train()
    for seed in range(4):
        x = batch((6, 4, 5, 5), seed)
        out = layer(x)
        reference(x)  # train mode: PyTorch's own running update with momentum m
        torch.testing.assert_close(layer.running_mean, reference.running_mean)
        torch.testing.assert_close(layer.running_var, reference.running_var)
        # normalized with the *updated* running statistics (spec M5)
        torch.testing.assert_close(out, by_hand(x, reference.running_mean, reference.running_var, reference))


def test_momentum_decay_schedule() -> None:
    m0, decay, floor = 0.1, 0.94, 0.005
    bn = source_layer()
    layer = tta.adapt(source_layer(), "momentum_decay")
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    for t in range(1, 5):
        x = batch((4, 4, 3, 3), t)
        out = layer(x)
        m_t = m0 * decay**t + floor
        dims = channel_dims(x)
        mean = (1 - m_t) * mean + m_t * x.mean(dims)
        var = (1 - m_t) * var + m_t * x.var(dims, unbiased=True)
        torch.testing.assert_close(layer.running_mean, mean)
        torch.testing.assert_close(layer.running_var, var)
        torch.testing.assert_close(out, by_hand(x, mean, var, bn))


def test_rbn_endpoints_and_ema() -> None:
    x = batch((6, 4, 5, 5), 4)
    assert torch.equal(tta.adapt(source_layer(), "rbn", alpha=0.0)(x), source_layer()(x))
    with torch.no_grad():
        tbn_out = tta.adapt(source_layer(), "tbn")(x)
        torch.testing.assert_close(tta.adapt(source_layer(), "rbn", alpha=1.0)(x), tbn_out, rtol=1e-5, atol=1e-5)

    bn, a = source_layer(), 0.05
    layer = tta.adapt(source_layer(), "rbn")
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    for seed in range(3):
        x = batch((5, 4, 4, 4), seed)
        out = layer(x)
        dims = channel_dims(x)
        mean = (1 - a) * mean + a * x.mean(dims)
        var = (1 - a) * var + a * x.var(dims, unbiased=False)
        torch.testing.assert_close(out, by_hand(x, mean, var, bn))


def unmix_by_loops(x: torch.Tensor, comp_mean: torch.Tensor, comp_var: torch.Tensor, bn: nn.Module,
                   temperature: float, batch_size_max: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spec M7 written instance by instance and component by component."""
    b_count, k_count = x.shape[0], comp_mean.shape[0]
    comp_mean, comp_var = comp_mean.clone(), comp_var.clone()
    out = torch.empty_like(x)
    probabilities, inst_stats = [], []
    for b in range(b_count):
        xb = x[b].flatten(1)
        mu_b, var_b = xb.mean(1), xb.var(1, unbiased=False)
        sims = torch.stack([F.cosine_similarity(mu_b, comp_mean[k], dim=0) for k in range(k_count)])
        p = torch.softmax(sims / temperature, dim=0)
        mixed_mean = [(1 - p[k]) * comp_mean[k] + p[k] * mu_b for k in range(k_count)]
        mixed_var = [(1 - p[k]) * comp_var[k] + p[k] * var_b for k in range(k_count)]
        mean = sum(mixed_mean) / k_count
        var = sum(mixed_var) / k_count + sum(m * m for m in mixed_mean) / k_count - mean * mean
        out[b] = by_hand(x[b : b + 1], mean[None], var[None], bn)[0]
        probabilities.append(p)
        inst_stats.append((mu_b, var_b))
    rate = 1 - (1 - 0.1) ** (b_count / batch_size_max)
    new_mean, new_var = comp_mean.clone(), comp_var.clone()
    for k in range(k_count):
        new_mean[k] += rate * sum(probabilities[b][k] * (inst_stats[b][0] - comp_mean[k]) for b in range(b_count)) / b_count
        new_var[k] += rate * sum(probabilities[b][k] * (inst_stats[b][1] - comp_var[k]) for b in range(b_count)) / b_count
    return out, new_mean, new_var


def test_unmix_tns_matches_the_equations_written_with_loops() -> None:
    bn = source_layer(channels=6)
    layer = tta.adapt(source_layer(channels=6), "unmix_tns", num_components=4, temperature=0.5)
    for seed in range(3):
        x = batch((5, 6, 4, 4), seed, shift=0.3 * seed)
        expected, new_mean, new_var = unmix_by_loops(
            x, layer.component_mean, layer.component_var, bn, temperature=0.5, batch_size_max=64
        )
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(layer.component_mean, new_mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.component_var, new_var, rtol=1e-5, atol=1e-5)


def test_unmix_tns_initial_components_follow_the_spec() -> None:
    bn = source_layer(channels=3)
    k, a = 4000, 0.5
    layer = tta.adapt(source_layer(channels=3), "unmix_tns", num_components=k, init_spread=a)
    spread = math.sqrt(a * k / (k - 1)) * bn.running_var.sqrt()
    torch.testing.assert_close(layer.component_mean.mean(0), bn.running_mean, rtol=0, atol=0.1)
    torch.testing.assert_close(layer.component_mean.std(0), spread, rtol=0.05, atol=0)
    torch.testing.assert_close(layer.component_var, ((1 - a) * bn.running_var).expand(k, -1))
    single = tta.adapt(source_layer(channels=3), "unmix_tns", num_components=1)
    assert torch.equal(single.component_mean[0], bn.running_mean)
    assert torch.equal(single.component_var[0], bn.running_var)


def test_unmix_tns_draw_is_seeded_and_differs_per_layer_and_seed() -> None:
    def model() -> nn.Module:
        return give_source_statistics(nn.Sequential(nn.BatchNorm2d(5), nn.BatchNorm2d(5)))

    one, two = tta.adapt(model(), "unmix_tns", seed=3), tta.adapt(model(), "unmix_tns", seed=3)
    other = tta.adapt(model(), "unmix_tns", seed=4)
    assert torch.equal(one[0].component_mean, two[0].component_mean)
    assert not torch.equal(one[0].component_mean - one[0].source_mean, one[1].component_mean - one[1].source_mean)
    assert not torch.equal(one[0].component_mean, other[0].component_mean)


def test_unmix_tns_with_one_component_is_instance_normalization() -> None:
    bn = source_layer()
    layer = tta.adapt(source_layer(), "unmix_tns", num_components=1)
    for seed in range(2):
        x = batch((3, 4, 5, 5), seed)
        expected = F.instance_norm(x, weight=bn.weight, bias=bn.bias, eps=EPS)
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)


def test_unmix_tns_on_flat_features_uses_source_statistics() -> None:
    x = batch((6, 4), 1)
    layer = tta.adapt(source_layer(dims=1), "unmix_tns")
    before = layer.component_mean.clone()
    assert torch.equal(layer(x), source_layer(dims=1)(x))
    assert torch.equal(layer.component_mean, before)


def test_unmix_tns_one_repeated_class_moves_one_component_most() -> None:
    layer = tta.adapt(source_layer(channels=8), "unmix_tns", num_components=16)
    before = layer.component_mean.clone()
    image = batch((1, 8, 6, 6), 5, shift=1.0)
    repeated = image + 0.01 * batch((32, 8, 6, 6), 6, shift=0.0, scale=1.0)
    for _ in range(5):
        layer(repeated)
    moved = (layer.component_mean - before).norm(dim=1).sort(descending=True).values
    assert moved[0] > 5 * moved[1]
