"""Each policy's equations (spec M1-M7, M9, M10, M12) against statistics recomputed here with plain tensor ops."""

from __future__ import annotations

import copy
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
