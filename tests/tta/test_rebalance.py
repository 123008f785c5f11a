"""``rebalance`` (ours, issue 12): the composition correction worked by hand, the class step, the AdaBN
invariant of its pool, and a stream of one-class batches whose balanced mean is known by construction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tta
from tests.tta.conftest import build, give_source_statistics, inputs
from tta.policies.rebalance import RebalancedBatchNorm


def layer_1d(num_classes: int = 2, **options: object) -> RebalancedBatchNorm:
    """One channel, source mean 0 and variance 1, no affine transform: outputs are the normalized values."""
    return RebalancedBatchNorm(nn.BatchNorm1d(1, affine=False).eval(), num_classes=num_classes, **options)


def test_one_class_pooled_moments_give_back_the_balanced_statistics() -> None:
    """m = 1, s = 2; class 0 at z-mean +1, class 1 at -1, both z-second moment 2 (within variance 1): class 0
    has raw mean 3 and variance 4. A pool of class 0 only (M1 = 3, M2 = 4 + 9) must give m = 1, s^2 = 4."""
    layer = layer_1d()
    layer.class_offset.copy_(torch.tensor([[1.0], [-1.0]]))
    layer.class_square.copy_(torch.tensor([[2.0], [2.0]]))
    mean, var = layer.balanced_stats(torch.tensor([3.0]), torch.tensor([13.0]), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(mean, torch.tensor([1.0]))
    torch.testing.assert_close(var, torch.tensor([4.0]))
    # half and half: the pool's own moments (mean 1, variance 4 + 4) are the balanced ones
    mean, var = layer.balanced_stats(torch.tensor([1.0]), torch.tensor([9.0]), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(mean, torch.tensor([1.0]))
    torch.testing.assert_close(var, torch.tensor([4.0]))


def test_a_first_batch_is_normalized_with_its_own_statistics_and_teaches_the_classes_their_moments() -> None:
    layer = layer_1d()
    x = torch.tensor([[1.0], [3.0]])
    with torch.no_grad():
        out = layer(x)
    # beta_1 = 1, nothing learnt: the batch's mean 2 and biased variance 1
    torch.testing.assert_close(out, (x - 2) / torch.sqrt(torch.tensor(1 + 1e-5)))
    layer.learn_classes(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # as the hook does: sample 0 is class 0
    # z = (x - 2) / 1 = -1, +1; z^2 = 1: a = (-1, 1) (already centred), q = (1, 1) (mean 1)
    torch.testing.assert_close(layer.class_offset, torch.tensor([[-1.0], [1.0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.class_square, torch.tensor([[1.0], [1.0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.composition, torch.tensor([0.5, 0.5]))


def test_class_moments_are_recentred_and_rescaled_to_a_balanced_unit_mixture() -> None:
    layer = layer_1d(num_classes=3)
    x = torch.tensor([[0.0], [2.0], [4.0], [4.0]])
    with torch.no_grad():
        layer(x)  # m = 2.5, var = 2.75
    layer.learn_classes(torch.eye(3)[[0, 1, 2, 2]])
    s = 2.75**0.5
    z = (torch.tensor([0.0, 2.0, 4.0]) - 2.5) / s  # class means in the batch's coordinates
    z_square = z.square()
    centre = z.mean()
    square = z_square - 2 * centre * z + centre**2
    scale = square.mean()
    torch.testing.assert_close(layer.class_offset[:, 0], (z - centre) / scale.sqrt(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.class_square[:, 0], square / scale, rtol=1e-4, atol=1e-5)
    assert abs(layer.class_offset.mean()) < 1e-6 and abs(layer.class_square.mean() - 1) < 1e-5


def test_without_the_correction_the_pool_is_the_concatenation_while_it_is_a_cumulative_mean() -> None:
    """prior='uniform': over the first 1/momentum equal batches, the statistics are those of their concatenation."""
    layer = RebalancedBatchNorm(give_source_statistics(nn.BatchNorm2d(3)), num_classes=4, prior="uniform", momentum=0.2)
    batches = [inputs("small_cnn", 6, seed)[:, :3] * (1 + seed) for seed in range(5)]
    with torch.no_grad():
        for x in batches:
            layer(x)
    pooled = torch.cat(batches)
    var, mean = torch.var_mean(pooled, dim=(0, 2, 3), correction=0)
    got_mean, got_var = layer.adapted_stats()
    torch.testing.assert_close(got_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_var, var, rtol=1e-4, atol=1e-5)


def two_class_stream(runs: int, run_length: int, batch: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One channel; class 0 ~ N(4, 1), class 1 ~ N(6, 1): balanced mean 5, balanced variance 2. Mixed
    batches first, then runs of one-class batches alternating between the classes."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    labels = [torch.arange(batch) % 2] * 10 + [torch.full((batch,), r % 2) for r in range(runs) for _ in range(run_length)]
    for y in labels:
        out.append((4 + 2 * y.float()[:, None] + torch.randn(batch, 1, generator=generator), y))
    return out


def oracle_model() -> nn.Module:
    """BatchNorm1d, then logits (-v, v) of the normalized value v: class 1 iff x is above the normalizing mean."""
    head = nn.Linear(1, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        head.bias.zero_()
    return nn.Sequential(nn.BatchNorm1d(1, affine=False), head).eval()


@pytest.mark.parametrize("prior, momentum, max_error", [("previous", None, 0.25), ("uniform", 1.0, 2.0)])
def test_runs_of_one_class_keep_the_balanced_mean_only_with_the_correction(
    prior: str, momentum: float | None, max_error: float
) -> None:
    model = tta.adapt(oracle_model(), "rebalance", prior=prior, momentum=momentum)
    errors, means = [], []
    with torch.no_grad():
        for x, y in two_class_stream(runs=6, run_length=5, batch=32):
            errors.append((model(x).argmax(1) != y).float().mean())
            means.append(model[0].adapted_stats()[0])
    late = torch.stack(means[-15:]).flatten()
    if prior == "previous":  # the balanced mean 5 is kept through the runs: the Bayes error Phi(-1) = 0.159
        assert (late - 5).abs().max() < max_error and torch.stack(errors[-15:]).mean() < 0.21
    else:  # without the correction each batch's mean is its class's (4 or 6): about half the samples wrong
        assert (late - 5).abs().min() > 0.5 and torch.stack(errors[-15:]).mean() > 0.3


def test_one_forward_per_batch_and_a_paused_model_learns_nothing() -> None:
    model = tta.adapt(build("small_cnn"), "rebalance")
    calls = []
    model[-1].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(inputs("small_cnn", 4))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with tta.paused(model):
            model(inputs("small_cnn", 4, seed=3))
    assert len(calls) == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_an_output_that_is_not_batch_by_classes_logits_is_named() -> None:
    model = tta.adapt(build("small_cnn"), "rebalance", num_classes=5)
    with pytest.raises(ValueError, match=r"needs \(batch, 5\) logits from the model; it returned \(4, 10\)"):
        with torch.no_grad():
            model(inputs("small_cnn", 4))


def test_a_model_without_a_linear_classifier_needs_num_classes() -> None:
    model = give_source_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match="has none; pass num_classes=K"):
        tta.adapt(model, "rebalance")
    assert not tta.policy_layers(model)


def test_detach_removes_the_hook() -> None:
    model = tta.adapt(build("small_cnn"), "rebalance")
    assert len(model._forward_hooks) == 1
    assert not tta.detach(model)._forward_hooks
