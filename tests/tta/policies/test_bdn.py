"""``bdn`` (docs/policies/bdn.md): the per-(domain, class) step, the domain statistics and the growth of the domains
worked by hand on one layer, the domain prediction's distance, the official adapter's outputs on a fixed model, the
forwards per call, defaults and errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tta
from tests.tta.conftest import build, inputs
from tta.policies.bdn import BalancedDomainNorm, default_domain_layer, wasserstein_distances


def layer_2d(**options: object) -> BalancedDomainNorm:
    """One channel, source mean 0 and variance 1, no affine transform, two classes: outputs are normalized values."""
    return BalancedDomainNorm(nn.BatchNorm2d(1, affine=False).eval(), num_classes=2, domain_layer=0, **options)


def per_domain_call(layer: BalancedDomainNorm, x: torch.Tensor, labels: list[int], domains: list[int]) -> torch.Tensor:
    """One call of the per-domain forward as the model's hook makes it: labels and domains set, then the forward."""
    layer.labels, layer.domains = torch.tensor(labels), torch.tensor(domains)
    with torch.no_grad():
        return layer(x)


def test_the_per_domain_class_step_and_the_domain_statistics_by_hand() -> None:
    layer = layer_2d(eta=0.5)
    # sample 0: values 1, 3 (mean 2, biased variance 1), class 0 of domain 0; sample 1: 0, 0, class 1 of domain 1
    x = torch.tensor([[[[1.0, 3.0]]], [[[0.0, 0.0]]]])
    out = per_domain_call(layer, x, [0, 1], [0, 1])
    # (0, 0), n = 1, m = 0.5: d = 2 -> mean 0 + 0.5*2 = 1; var = 1 + 0.5(1 + 4 - 1) - 1^2 = 2
    # (1, 1): d = 0 -> mean 0; var = 1 + 0.5(0 - 1) = 0.5; (0, 1) and (1, 0) untouched (0, 1)
    torch.testing.assert_close(layer.local_mean[:2, :, 0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(layer.local_var[:2, :, 0], torch.tensor([[2.0, 1.0], [1.0, 0.5]]))
    # domain 0: mean (1 + 0)/2 = 0.5, var (2 + 1)/2 + var(1, 0) = 1.5 + 0.5 = 2;
    # domain 1: mean 0, var (1 + 0.5)/2 + 0 = 0.75; each sample normalized with its domain's, after the step
    eps = layer.eps
    expected = torch.tensor([[[[0.5 / math.sqrt(2 + eps), 2.5 / math.sqrt(2 + eps)]]], [[[0.0, 0.0]]]])
    torch.testing.assert_close(out, expected)
    # the last held domain (1) was assigned: a third one is added, still at the source statistics
    assert int(layer.active) == 3 and layer.domain_count[:3].tolist() == [1, 1, 0]
    torch.testing.assert_close(layer.domain_stats()[0][2], torch.zeros(1))


def test_a_group_of_more_than_one_over_eta_samples_steps_to_its_own_statistics() -> None:
    layer = layer_2d(eta=0.5)  # n = 3 > 1/eta: m = 1/3 (TRIBE's cap; the official BDN step would be 1.5)
    x = torch.tensor([1.0, 2.0, 6.0]).view(3, 1, 1, 1)
    per_domain_call(layer, x, [1, 1, 1], [0, 0, 0])
    # mean (1 + 2 + 6)/3 = 3; var 1 + (1/3)(1 + 4 + 36 - 3) - 3^2 = 14/3, the biased variance of 1, 2, 6
    torch.testing.assert_close(layer.local_mean[0, 1], torch.tensor([3.0]))
    torch.testing.assert_close(layer.local_var[0, 1], torch.tensor([14 / 3]))


def test_the_wasserstein_distance_by_hand_and_the_nearest_held_domain() -> None:
    # (0 - 1)^2 + (1 - 2)^2 in channel 0, (0 - 0)^2 + (2 - 2)^2 in channel 1: 2
    distances = wasserstein_distances(
        torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 4.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[4.0, 4.0]])
    )
    torch.testing.assert_close(distances, torch.tensor([[2.0]]))
    layer = layer_2d()
    layer.local_mean[0].fill_(5.0)  # domain 0 far from the samples; domain 1 (the source) near
    samples = torch.tensor([0.1, -0.1]).view(2, 1, 1, 1)
    assert layer.predict_domains(samples).tolist() == [1, 1]
    layer.local_mean[2].fill_(0.1)  # an unheld slot nearer still is never chosen
    assert layer.predict_domains(samples).tolist() == [1, 1]


def test_no_domain_is_added_past_max_domains_without_pruning() -> None:
    layer = layer_2d(max_domains=3)
    for step in range(4):  # each call assigns the last held domain
        per_domain_call(layer, torch.randn(2, 1, 2, 2), [0, 1], [0, min(step + 1, 2)])
    assert int(layer.active) == 3 and layer.local_mean.shape[0] == 3


def test_pruning_removes_the_least_used_of_the_older_half_and_keeps_the_order() -> None:
    layer = layer_2d(max_domains=4, prune=True)
    layer.active.fill_(4)
    layer.domain_count[:4] = torch.tensor([5, 2, 7, 1])
    layer.local_mean[:4, :, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])[:, None]
    per_domain_call(layer, torch.full((1, 1, 1, 1), 3.0), [0], [3])  # the last held domain assigned
    # a fifth is added (5 held), the older half is domains 0, 1 (5 // 2 = 2): domain 1 (count 2) goes
    assert int(layer.active) == 4 and layer.domain_count.tolist() == [5, 7, 2, 0, 0]
    torch.testing.assert_close(layer.local_mean[:3, 1, 0], torch.tensor([0.0, 2.0, 3.0]))
    torch.testing.assert_close(layer.local_mean[3:, :, 0], torch.zeros(2, 2))  # fresh slots at the source


class Net(nn.Module):
    """The model of the scratch run of the official adapter (/work/scratch/cofa/bdn_model.py)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            for bn in (self.bn1, self.bn2):
                bn.running_mean.copy_(torch.randn(4, generator=g) * 0.2)
                bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
            self.fc.weight.copy_(torch.tensor([[3.0, -3.0, 0.0, 0.0], [0.0, 3.0, -3.0, 0.0], [-3.0, 0.0, 0.0, 3.0]]))
            self.fc.bias.zero_()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    scales = [(2.0, 1.0), (2.0, 1.0), (0.5, 0.0), (2.0, 1.0), (0.5, 0.0), (1.0, -1.0)]
    return [torch.randn(6, 3, 5, 5, generator=g) * s + t for s, t in scales]


# The official UNITTA_BDN (LeapLabTHU/UniTTA at c41bce7, core/adapter/unitta_bdn.py, MODE dynamic,
# MODE_DOMAIN_PREDICTION single, DIST_METRIC w2, ETA 0.05) on Net and batches(): its softmax outputs for the
# third and sixth batch and the domain counts of the first layer after each batch, recorded by
# PYTHONPATH=/work/scratch/cofa/official:/work/scratch/cofa/pylib:/work/scratch/cofa \
#   python /work/scratch/cofa/run_bdn.py LAYER FILT PRUNE MAX_DOMAINS
# (the one change to the official code: its domain counter's device="cuda" made "cpu").
OFFICIAL = {
    # run_bdn.py bn1 1 0 64: the domain predicted at the first layer, filter on, no pruning
    (0, True, False, 64): (
        [
            [0.05707631, 0.05707631, 0.88584739],
            [0.06859004, 0.06814179, 0.86326814],
            [0.08069750, 0.07015493, 0.84914756],
            [0.05572758, 0.04954723, 0.89472520],
            [0.07488725, 0.06663895, 0.85847384],
            [0.07901528, 0.08094124, 0.84004349],
        ],
        [
            [0.13912639, 0.07538881, 0.78548485],
            [0.13649687, 0.09045140, 0.77305174],
            [0.75243562, 0.06339914, 0.18416531],
            [0.97330260, 0.00985533, 0.01684212],
            [0.15836734, 0.07776174, 0.76387089],
            [0.85684741, 0.03811879, 0.10503379],
        ],
        [[6, 0], [12, 0], [12, 6, 0], [18, 6, 0], [18, 12, 0], [18, 18, 0]],
    ),
    # run_bdn.py bn2 0 1 2: predicted at the second layer, filter off, pruning at 2 domains
    (1, False, True, 2): (
        [
            [0.20377697, 0.07283527, 0.72338778],
            [0.17492418, 0.10232294, 0.72275287],
            [0.46473917, 0.11038581, 0.42487496],
            [0.45343307, 0.06853470, 0.47803223],
            [0.32561159, 0.09711559, 0.57727283],
            [0.24312936, 0.13179511, 0.62507552],
        ],
        [
            [0.47310960, 0.07842328, 0.44846717],
            [0.51900250, 0.09017023, 0.39082727],
            [0.75938058, 0.05834864, 0.18227075],
            [0.97611779, 0.00865572, 0.01522650],
            [0.64901966, 0.05254939, 0.29843095],
            [0.86962122, 0.03396332, 0.09641539],
        ],
        [[6, 0], [12, 0], [6, 0], [12, 0], [6, 0], [12, 0]],
    ),
}


@pytest.mark.parametrize("config", list(OFFICIAL))
def test_matches_the_official_adapter_recorded_on_a_fixed_model(config: tuple[int, bool, bool, int]) -> None:
    layer, confidence_filter, prune, max_domains = config
    model = tta.adapt(
        Net(),
        "bdn",
        eta=0.05,
        domain_layer=layer,
        confidence_filter=confidence_filter,
        prune=prune,
        max_domains=max_domains,
    )
    third, sixth, counts = OFFICIAL[config]
    first_layer = model.bn1
    with torch.no_grad():
        for step, x in enumerate(batches()):
            out = model(x).softmax(1)
            if step == 2:
                torch.testing.assert_close(out, torch.tensor(third), rtol=1e-5, atol=1e-6)
            held = int(first_layer.active)
            assert first_layer.domain_count[:held].tolist() == counts[step], step
        torch.testing.assert_close(out, torch.tensor(sixth), rtol=1e-5, atol=1e-6)


def count_forwards(model: nn.Module, x: torch.Tensor) -> int:
    calls = []
    handle = model[0].register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        model(x)
    handle.remove()
    return len(calls)


def test_three_forwards_adapting_two_paused() -> None:
    model = tta.adapt(build("small_cnn"), "bdn")
    x = inputs("small_cnn", 4, 0)
    assert count_forwards(model, x) == 3
    with tta.paused(model):
        assert count_forwards(model, x) == 2


def test_defaults_and_a_domain_layer_out_of_range() -> None:
    assert [default_domain_layer(n) for n in (1, 25, 31, 53)] == [0, 10, 12, 21]
    model = build("small_cnn")
    count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with pytest.raises(ValueError, match=f"domain_layer={count}, but the model has {count} BatchNorm"):
        tta.adapt(model, "bdn", domain_layer=count)
    assert not tta.policy_layers(model)  # refused before any layer was swapped
    layers = [layer for _, layer in tta.policy_layers(tta.adapt(model, "bdn"))]
    assert [layer.predicts_domain for layer in layers].count(True) == 1
    assert layers[0].eta == 0.01 and layers[0].gamma == 0.0 and layers[0].max_domains == 64
