"""``cofa`` (docs/methods/cofa.md): the averaged features and the confidence filter worked by hand, the official
adapter's outputs on a fixed model, the previous sample carried across batches, pausing, reset and refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tta


def identity_model() -> nn.Module:
    """BatchNorm1d(2) with running variance 1 - eps (normalizes nothing) and an identity classifier: the
    classifier's input and the logits are the input itself."""
    bn = nn.BatchNorm1d(2, affine=False).eval()
    bn.running_var.fill_(1 - bn.eps)
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(2))
        linear.bias.zero_()
    return nn.Sequential(bn, linear)


def cofa(model: nn.Module, **options: object) -> tta.Method:
    return tta.attach_method(tta.adapt(model, "source"), "cofa", **options)


def test_each_sample_is_averaged_with_the_one_before_it_across_batches() -> None:
    learner = cofa(identity_model(), confidence_filter=False)
    with torch.no_grad():
        first = learner(torch.tensor([[2.0, 0.0], [0.0, 2.0], [4.0, 0.0]]))
        # nothing before the first sample since attach: it is kept; then (0,2)+(2,0) and (4,0)+(0,2), halved
        torch.testing.assert_close(first, torch.tensor([[2.0, 0.0], [1.0, 1.0], [2.0, 1.0]]))
        second = learner(torch.tensor([[0.0, 4.0]]))  # a batch of one: with the last sample of the batch before
        torch.testing.assert_close(second, torch.tensor([[2.0, 2.0]]))


def test_the_filter_keeps_a_sample_s_own_logits_unless_the_average_is_strictly_more_confident() -> None:
    learner = cofa(identity_model())
    x = torch.tensor([[3.0, 0.0], [1.0, 0.5], [0.0, 2.0], [0.0, 2.0]])
    with torch.no_grad():
        out = learner(x)
    # sample 1: (1, 0.5) -> averaged (2, 0.25), margin 1.75 > 0.5: taken; sample 2: (0, 2) -> (0.5, 1.25), less
    # confident: kept; sample 3: (0, 2) averaged with (0, 2) is itself, as confident: kept (>= keeps its own)
    torch.testing.assert_close(out, torch.tensor([[3.0, 0.0], [2.0, 0.25], [0.0, 2.0], [0.0, 2.0]]))


class Net(nn.Module):
    """The model of the scratch run of the official adapter (weights by hand)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 3)
        self.bn = nn.BatchNorm1d(3)
        self.fc = nn.Linear(3, 4)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0, 0.5], [-0.5, 1.0], [0.25, -1.0]]))
            self.lin.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
            self.bn.running_mean.copy_(torch.tensor([0.2, -0.1, 0.0]))
            self.bn.running_var.copy_(torch.tensor([1.5, 0.8, 2.0]))
            self.bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
            self.bn.bias.copy_(torch.tensor([0.0, 0.1, -0.1]))
            self.fc.weight.copy_(torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.5, 0.5], [-1.0, 1.0, 1.0], [0.5, -0.5, 2.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, 0.1, -0.1, 0.2]))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.lin(x)))


BATCHES = [
    torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 2.0], [0.5, -0.5]]),
    torch.tensor([[2.0, 1.0], [-1.5, 0.5], [0.0, 0.0]]),
]
# The official UNITTA_COFA (LeapLabTHU/UniTTA at c41bce7, core/adapter/unitta_cofa.py) on Net and BATCHES, its
# softmax outputs, recorded by /work/scratch/cofa/run_cofa.py:
# PYTHONPATH=/work/scratch/cofa/official:/work/scratch/cofa/pylib python /work/scratch/cofa/run_cofa.py
OFFICIAL = {
    True: [
        [
            [4.80255544e-01, 2.18425933e-02, 1.67275984e-02, 4.81174260e-01],
            [9.42259952e-02, 7.65051723e-01, 1.32076114e-01, 8.64616036e-03],
            [6.63621060e-04, 9.61896837e-01, 3.74339782e-02, 5.57692783e-06],
            [1.61644906e-01, 1.31976567e-02, 2.63483580e-02, 7.98809052e-01],
        ],
        [
            [0.94617450, 0.01335355, 0.00150478, 0.03896721],
            [0.00183145, 0.64027160, 0.35665965, 0.00123726],
            [0.02799204, 0.54664975, 0.39722207, 0.02813609],
        ],
    ],
    False: [
        [
            [4.80255544e-01, 2.18425933e-02, 1.67275984e-02, 4.81174260e-01],
            [4.69076931e-01, 2.85049260e-01, 1.03645742e-01, 1.42228067e-01],
            [8.44569970e-03, 9.16220605e-01, 7.50992075e-02, 2.34530744e-04],
            [6.61610663e-02, 7.19737470e-01, 2.00618625e-01, 1.34828137e-02],
        ],
        [
            [0.66614306, 0.02261245, 0.01072541, 0.30051902],
            [0.25351289, 0.56311619, 0.14108491, 0.04228603],
            [0.02799204, 0.54664975, 0.39722207, 0.02813609],
        ],
    ],
}


@pytest.mark.parametrize("confidence_filter", [True, False])
def test_matches_the_official_adapter_recorded_on_a_fixed_model(confidence_filter: bool) -> None:
    learner = cofa(Net(), confidence_filter=confidence_filter)
    with torch.no_grad():
        for x, expected in zip(BATCHES, OFFICIAL[confidence_filter]):
            torch.testing.assert_close(learner(x).softmax(1), torch.tensor(expected), rtol=1e-5, atol=1e-7)


def test_paused_uses_the_previous_sample_and_keeps_nothing() -> None:
    learner = cofa(identity_model(), confidence_filter=False)
    with torch.no_grad():
        learner(torch.tensor([[2.0, 0.0]]))
        state = {k: v.clone() for k, v in learner.state_dict().items() if isinstance(v, torch.Tensor)}
        with tta.paused(learner):
            torch.testing.assert_close(learner(torch.tensor([[0.0, 2.0]])), torch.tensor([[1.0, 1.0]]))
            torch.testing.assert_close(learner(torch.tensor([[0.0, 4.0]])), torch.tensor([[1.0, 2.0]]))
        for key, value in state.items():
            assert torch.equal(learner.state_dict()[key], value), key
        torch.testing.assert_close(learner(torch.tensor([[0.0, 4.0]])), torch.tensor([[1.0, 2.0]]))


def test_reset_forgets_the_previous_sample() -> None:
    learner = cofa(identity_model(), confidence_filter=False)
    with torch.no_grad():
        learner(torch.tensor([[2.0, 0.0]]))
        tta.reset(learner)
        torch.testing.assert_close(learner(torch.tensor([[0.0, 2.0]])), torch.tensor([[0.0, 2.0]]))


def test_a_non_finite_last_sample_is_not_carried_into_the_next_batch() -> None:
    learner = cofa(identity_model(), confidence_filter=False)
    with torch.no_grad():
        learner(torch.tensor([[2.0, 0.0]]))
        out = learner(torch.tensor([[0.0, float("nan")]]))
        assert torch.isnan(out).any()
        torch.testing.assert_close(learner(torch.tensor([[0.0, 2.0]])), torch.tensor([[1.0, 1.0]]))


def test_a_model_without_a_linear_layer_is_refused_and_detach_removes_the_hook() -> None:
    model = tta.adapt(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4).eval(), nn.Flatten()), "rbn")
    with pytest.raises(ValueError, match=r"last nn\.Linear"):
        tta.attach_method(model, "cofa")
    learner = cofa(identity_model())
    model = tta.detach(learner)
    assert not model[1]._forward_pre_hooks
