"""``lame`` (docs/methods/lame.md): affinities and the bound iterations worked by hand on tiny batches, the fixed point,
the features it reads, a batch of one, errors and the hook's removal."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import tta
from tests.tta.conftest import build, give_source_statistics, inputs
from tta.laplacian import knn_affinity, laplacian_optimization, linear_affinity, rbf_affinity

# Three points: |p0 p1| = 1, |p0 p2| = 2, |p1 p2| = sqrt(5).
POINTS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])


def test_rbf_bandwidth_is_the_mean_distance_to_the_kth_nearest_point_itself_counted() -> None:
    # knn = 2: the 2nd nearest of each row, itself first: 1, 1, 2 -> sigma = 4/3, 2 sigma^2 = 32/9
    e = math.exp
    expected = torch.tensor(
        [
            [1.0, e(-9 / 32), e(-36 / 32)],
            [e(-9 / 32), 1.0, e(-45 / 32)],
            [e(-36 / 32), e(-45 / 32), 1.0],
        ]
    )
    torch.testing.assert_close(rbf_affinity(POINTS, knn=2), expected)


def test_knn_affinity_links_each_point_to_its_nearest_others() -> None:
    expected_1 = torch.tensor([[0.0, 1, 0], [1, 0, 0], [1, 0, 0]])  # p2's nearest other point is p0
    torch.testing.assert_close(knn_affinity(POINTS, knn=1), expected_1)
    torch.testing.assert_close(knn_affinity(POINTS, knn=5), torch.ones(3, 3) - torch.eye(3))  # k past N - 1
    torch.testing.assert_close(linear_affinity(POINTS, knn=5), torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, 0, 4]]))


def test_one_bound_step_by_hand() -> None:
    """Y0 = softmax(-unary) = p; Y1 = softmax(log p + W Y0): sample 0 gains exp(Y0 of sample 1) per class."""
    p = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    unary = -torch.log(p)
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    row0 = [0.9 * math.exp(0.4), 0.1 * math.exp(0.6)]
    row1 = [0.4 * math.exp(0.9), 0.6 * math.exp(0.1)]
    expected = torch.tensor([[v / sum(row0) for v in row0], [v / sum(row1) for v in row1]])
    torch.testing.assert_close(laplacian_optimization(unary, swap, max_steps=1).exp(), expected)


def test_the_converged_assignment_is_a_fixed_point_of_the_bound_step() -> None:
    generator = torch.Generator().manual_seed(0)
    unary = -torch.log_softmax(torch.randn(6, 4, generator=generator) * 2, 1)
    kernel = rbf_affinity(torch.nn.functional.normalize(torch.randn(6, 3, generator=generator), dim=1), knn=5)
    y = laplacian_optimization(unary, kernel).exp()
    torch.testing.assert_close(y, (kernel @ y - unary).softmax(1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(y, (-unary).softmax(1), atol=1e-3)  # the kernel moved it


@pytest.mark.parametrize("affinity", ["knn", "rbf", "linear"])
def test_a_batch_of_one_keeps_the_models_class_and_stays_finite(affinity: str) -> None:
    learner = tta.attach_method(tta.adapt(build("small_cnn"), "source"), "lame", affinity=affinity)
    x = inputs("small_cnn", 1)
    with torch.no_grad():
        logits = learner.model(x)
        out = learner(x)
    assert torch.isfinite(out).all() and torch.equal(out.argmax(1), logits.argmax(1))
    torch.testing.assert_close(rbf_affinity(torch.tensor([[0.6, 0.8]]), knn=5), torch.ones(1, 1))


def test_the_features_are_the_classifiers_input_of_the_returned_forward() -> None:
    """Over ``balanced`` (two forwards per call) LAME refines the first, returned forward."""
    model = tta.adapt(build("small_cnn"), "balanced")
    reference = copy.deepcopy(model)
    learner = tta.attach_method(model, "lame", affinity="rbf")
    x = inputs("small_cnn", 8)
    with torch.no_grad(), tta.paused(reference):
        features = reference[:-1](x)
        logits = reference[-1](features)
        out = learner(x)
    unary = -torch.log(logits.softmax(1) + 1e-10)
    kernel = rbf_affinity(torch.nn.functional.normalize(features, dim=1), knn=5)
    torch.testing.assert_close(out, laplacian_optimization(unary, kernel))
    assert not torch.allclose(out.softmax(1), logits.softmax(1), atol=1e-3)  # LAME changed the prediction


def test_a_model_without_a_linear_classifier_is_refused() -> None:
    model = tta.adapt(give_source_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))), "tbn")
    with pytest.raises(ValueError, match=r"last nn.Linear, and Sequential has none"):
        tta.attach_method(model, "lame")


def test_a_classifier_input_that_is_not_batch_by_features_is_named() -> None:
    model = give_source_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(14, 5), nn.Flatten()))
    learner = tta.attach_method(tta.adapt(model, "tbn"), "lame")
    with pytest.raises(
        ValueError,
        match=r"input of the model's last nn.Linear for a batch of 2; it got an input of shape \(2, 4, 14, 14\)",
    ):
        learner(torch.randn(2, 3, 16, 16))


def test_detach_removes_the_feature_hook() -> None:
    model = tta.adapt(build("small_cnn"), "rbn")
    learner = tta.attach_method(model, "lame", affinity="linear")
    assert len(model[-1]._forward_pre_hooks) == 1
    assert tta.detach(learner) is model
    assert not model[-1]._forward_pre_hooks


def test_options_are_checked() -> None:
    model = tta.adapt(build("small_cnn"), "tbn")
    with pytest.raises(ValueError, match="option 'affinity' must be one of 'knn', 'rbf', 'linear', got 'kNN'"):
        tta.attach_method(model, "lame", affinity="kNN")
    with pytest.raises(ValueError, match="option 'knn' must lie in"):
        tta.attach_method(model, "lame", knn=0)
    with pytest.raises(TypeError, match="option 'force_symmetry' must be a bool"):
        tta.attach_method(model, "lame", force_symmetry=1)
    assert not model[-1]._forward_pre_hooks  # nothing attached by a refused option


@pytest.mark.parametrize("policy", ["rbn", "balanced"])
def test_the_last_output_of_lames_model_is_the_policy_alones(policy: str) -> None:
    """What makes LAME output-level: over three adapting batches, the last output of its adapted model (what a
    forward hook sees) is a separate adapted copy's, and LAME's own prediction is a separate learner's."""
    alone = tta.adapt(build("small_cnn"), policy)
    separate = tta.attach_method(copy.deepcopy(alone), "lame")
    shared = tta.attach_method(copy.deepcopy(alone), "lame")
    assert shared.output_level and not tta.get_method("tent").output_level
    outputs: list[torch.Tensor] = []
    shared.model.register_forward_hook(lambda module, args, output: outputs.append(output))
    with torch.no_grad():
        for seed in range(3):
            x = inputs("small_cnn", 8, seed)
            refined = shared(x)
            assert torch.equal(outputs[-1], alone(x)) and torch.equal(refined, separate(x))
    assert not torch.equal(outputs[-1], refined)  # two outputs, not one twice


@pytest.mark.parametrize("affinity", ["knn", "rbf", "linear"])
def test_a_non_finite_image_stays_as_the_model_gave_it_and_leaves_the_other_rows_as_without_it(affinity: str) -> None:
    """Over ``source`` each row's logits do not depend on the batch: the 15 finite rows of a batch of 16 with
    one NaN image are LAME's for those 15 images alone, and the NaN row is the model's (no class-0 row)."""
    learner = tta.attach_method(tta.adapt(build("small_cnn"), "source"), "lame", affinity=affinity)
    x = inputs("small_cnn", 16, seed=4)
    x[9, 1, 2, 2] = float("nan")
    finite = torch.cat([x[:9], x[10:]])
    with torch.no_grad():
        out, expected = learner(x), learner(finite)
    assert torch.isnan(out[9]).all()
    torch.testing.assert_close(torch.cat([out[:9], out[10:]]), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("affinity", ["knn", "rbf"])
def test_the_affinities_are_those_of_the_explicit_distances_with_duplicate_rows(affinity: str) -> None:
    """The neighbours and the bandwidth of the distances written out pair by pair, ``|f_i - f_j|`` over a
    (N, N, D) tensor, on random rows with duplicates (distance exactly 0 between two distinct rows)."""
    generator = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(40, 64, generator=generator), dim=1)
    features[7], features[30], features[31] = features[3], features[12], features[12]
    dist = torch.linalg.vector_norm(features[None] - features[:, None], dim=-1)
    if affinity == "knn":
        neighbours = dist.topk(6, dim=-1, largest=False).indices[:, 1:]
        expected = torch.zeros_like(dist).scatter_(1, neighbours, 1.0)
        assert torch.equal(knn_affinity(features, knn=5), expected)
    else:
        sigma = dist.topk(5, dim=-1, largest=False).values[:, -1].mean()
        expected = torch.where(dist == 0, 1.0, torch.exp(-dist.square() / (2 * sigma.square())))
        torch.testing.assert_close(rbf_affinity(features, knn=5), expected, rtol=1e-5, atol=1e-6)


def test_the_distances_take_memory_of_the_order_of_the_pairs_not_of_pairs_times_features() -> None:
    """Every allocation of the kNN affinity of 256 rows of 512 features is a few (N, N) matrices, far below
    the (N, N, D) differences (128 MiB here)."""
    features = torch.nn.functional.normalize(torch.randn(256, 512), dim=1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        knn_affinity(features, knn=5)
    largest = max(event.cpu_memory_usage for event in profile.key_averages())
    assert 0 < largest <= 8 * 256 * 256 * 4
