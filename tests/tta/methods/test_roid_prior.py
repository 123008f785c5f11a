"""``roid_prior`` (docs/methods/roid_prior.md): ROID's prior correction worked by hand, the official code's outputs,
the learner (stateless, output-level), non-finite rows and refused outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tta
from tests.tta.conftest import build, inputs
from tta.methods.roid_prior import prior_correction


def test_two_samples_two_classes_by_hand() -> None:
    """p rows (3/4, 1/4) and (1/2, 1/2): prior (5/8, 3/8); s = max(1/2, 1/2) / (5/8) = 4/5; smoothed prior
    ((5/8 + 4/5) / (1 + 8/5), (3/8 + 4/5) / (1 + 8/5)) = (57/104, 47/104); each logit times its class's."""
    logits = torch.tensor([[torch.log(torch.tensor(3.0)).item(), 0.0], [0.5, 0.5]])
    smoothed = torch.tensor([57 / 104, 47 / 104])
    torch.testing.assert_close(prior_correction(logits), logits * smoothed)
    torch.testing.assert_close(smoothed.sum(), torch.tensor(1.0))


def test_a_uniform_prior_divides_every_logit_by_the_classes() -> None:
    """p = 1/K: s = max(1/B, 1/K) K, and (1/K + s) / (1 + s K) = 1/K whatever s."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [-1.0, 2.0, 0.0], [0.0, -1.0, 2.0]])  # each class sees 2, 0 and -1
    assert torch.allclose(logits.softmax(1).mean(0), torch.full((3,), 1 / 3))
    torch.testing.assert_close(prior_correction(logits), logits / 3)


# The official prior correction (mariodoebler/test-time-adaptation at 8b2ed63, classification/methods/roid.py, the
# `use_prior_correction` step of ROID.forward_and_adapt, run as it is with its imports stubbed and the training
# made a no-op), on logits = torch.randn(B, K, generator=torch.Generator().manual_seed(0)) * scale drawn in this
# order; recorded by /work/scratch/t3a/run_official_roid.py, rounded to 6 decimals.
OFFICIAL = [
    (4, 3, 2.0, [[1.339852, -0.170677, -1.195864], [0.494235, -0.630826, -0.767642], [0.350699, 0.487448, -0.394776],
                 [-0.350696, -0.34704, 0.099914]]),
    (2, 5, 3.0, [[-0.440484, 0.801616, -0.541349, 0.064461, -0.411574],
                 [0.191848, -0.649677, -0.762661, 0.194587, 1.058521]]),
    (1, 4, 1.0, [[0.236556, 0.192319, 0.045966, 0.329248]]),
    (6, 10, 4.0, [
        [-0.083123, -0.145545, 0.230894, -0.169465, 0.094114, -0.160231, -0.203284, -0.24029, -0.682415, -0.452872],
        [0.656696, -0.204905, -0.563247, 0.080862, -0.03163, -0.176099, -0.524343, 1.110777, -0.210859, 0.123132],
        [0.544606, 0.773492, 0.725332, 1.020832, -0.488591, 0.396705, -0.049899, 0.348629, 0.14601, -0.279146],
        [-0.577071, 0.006868, 0.357795, -0.171557, 0.47599, 0.127434, -0.001172, -0.231239, 0.520858, 0.144765],
        [-0.377108, -0.355361, 0.014251, 0.304524, -0.100208, -0.866417, -0.025865, -0.014705, 0.428973, 0.128129],
        [-0.332534, -0.020878, -0.264639, -0.19887, 0.880022, -0.143229, 0.043951, 0.503973, 0.411527, 0.509075]]),
]  # fmt: skip


def identity_model(classes: int) -> nn.Module:
    """An identity BatchNorm1d (mean 0, variance 1, eps 0): under ``source`` the logits are the input."""
    return nn.Sequential(nn.BatchNorm1d(classes, eps=0.0)).eval()


def test_outputs_match_the_official_roid_prior_correction() -> None:
    generator = torch.Generator().manual_seed(0)
    for batch, classes, scale, expected in OFFICIAL:
        logits = torch.randn(batch, classes, generator=generator) * scale
        learner = tta.attach_method(tta.adapt(identity_model(classes), "source"), "roid_prior")
        with torch.no_grad():
            out = learner(logits)
        torch.testing.assert_close(out, torch.tensor(expected), rtol=0, atol=2e-6)


def test_stateless_paused_or_not_and_the_model_output_is_the_policy_alones() -> None:
    alone = tta.adapt(build("small_cnn"), "rbn")
    learner = tta.attach_method(copy.deepcopy(alone), "roid_prior")
    assert learner.output_level and tta.method_options("roid_prior") == {}
    outputs: list[torch.Tensor] = []
    learner.model.register_forward_hook(lambda module, args, output: outputs.append(output))
    with torch.no_grad():
        for seed in range(3):
            x = inputs("small_cnn", 8, seed)
            with tta.paused(learner):
                paused = learner(x)
            corrected = learner(x)
            assert torch.equal(outputs[-1], alone(x))
            torch.testing.assert_close(corrected, prior_correction(outputs[-1]))
    assert torch.equal(paused, prior_correction(outputs[-2]))  # the paused forward: the same rule, no update
    assert not torch.equal(outputs[-1], corrected)


def test_a_non_finite_row_is_left_out_of_the_prior_and_returned_as_given() -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    with_nan = torch.cat([logits[:2], torch.tensor([[float("nan"), 0.0, 1.0, 2.0]]), logits[2:]])
    out = prior_correction(with_nan)
    torch.testing.assert_close(torch.cat([out[:2], out[3:]]), prior_correction(logits))
    torch.testing.assert_close(out[2], with_nan[2], equal_nan=True)
    only_nan = torch.full((2, 3), float("nan"))
    assert prior_correction(only_nan).isnan().all()


def test_an_output_that_is_not_logits_is_refused() -> None:
    model = tta.adapt(nn.Sequential(nn.BatchNorm2d(3)).eval(), "tbn")
    learner = tta.attach_method(model, "roid_prior")
    with pytest.raises(ValueError, match=r"roid_prior needs \(batch, classes\) logits from the model"):
        learner(torch.randn(2, 3, 4, 4))
