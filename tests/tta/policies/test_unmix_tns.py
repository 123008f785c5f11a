"""``unmix_tns`` (docs/policies/unmix_tns.md): the mixture equations, the seeded components and their update."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import tta
from tests.tta.conftest import give_source_statistics
from tests.tta.policies.conftest import EPS, batch, by_hand, source_layer


def unmix_by_loops(
    x: torch.Tensor,
    comp_mean: torch.Tensor,
    comp_var: torch.Tensor,
    bn: nn.Module,
    temperature: float,
    batch_size_max: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        new_mean[k] += (
            rate * sum(probabilities[b][k] * (inst_stats[b][0] - comp_mean[k]) for b in range(b_count)) / b_count
        )
        new_var[k] += (
            rate * sum(probabilities[b][k] * (inst_stats[b][1] - comp_var[k]) for b in range(b_count)) / b_count
        )
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
