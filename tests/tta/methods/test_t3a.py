"""``t3a`` (docs/methods/t3a.md): the warm-up supports, one admission and the prototype prediction worked by hand,
the official code's outputs, the bounded memory, paused and reset, non-finite samples, errors and the hook's
removal."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import tta
from tests.tta.conftest import build, give_source_statistics, inputs


def linear_head(weight: list[list[float]], bias: list[float]) -> nn.Module:
    """An identity BatchNorm1d (mean 0, variance 1, eps 0) before a linear classifier: the classifier's input is
    the input itself under the ``source`` policy."""
    weight_t = torch.tensor(weight)
    head = nn.Sequential(nn.BatchNorm1d(weight_t.shape[1], eps=0.0), nn.Linear(weight_t.shape[1], len(weight_t)))
    with torch.no_grad():
        head[1].weight.copy_(weight_t)
        head[1].bias.copy_(torch.tensor(bias))
    return head.eval()


def t3a(head: nn.Module, filter_K: int) -> tta.Method:
    return tta.attach_method(tta.adapt(head, "source"), "t3a", filter_K=filter_K)


def binary_entropy(gap: float) -> float:
    """The entropy of softmax([gap, 0])."""
    q = 1 / (1 + math.exp(-gap))
    return -(q * math.log(q) + (1 - q) * math.log(1 - q))


def test_warmup_supports_are_the_classifier_rows_labelled_by_their_own_prediction() -> None:
    """W W^T + b: row 0 -> [1, 0, 0] + b = [1, 0, -3] (class 0), row 1 -> [0, 1, -3] (class 1, the same entropy),
    row 2 -> [0, 0, 1] + b = [0, 0, -2] (class 0, a tie broken by the first): class 2 has no support."""
    learner = t3a(linear_head([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, -3]), filter_K=3)
    entropy_row0 = -sum(p * math.log(p) for p in torch.tensor([1.0, 0, -3]).softmax(0).tolist())
    entropy_row2 = -sum(p * math.log(p) for p in torch.tensor([0.0, 0, -2]).softmax(0).tolist())
    assert entropy_row0 < entropy_row2
    inf = math.inf
    torch.testing.assert_close(
        learner.support_entropy, torch.tensor([[entropy_row0, entropy_row2, inf], [entropy_row0, inf, inf], [inf] * 3])
    )
    torch.testing.assert_close(learner.supports[0, :2], torch.tensor([[1.0, 0, 0], [0, 0, 1]]))
    torch.testing.assert_close(learner.supports[1, 0], torch.tensor([0.0, 1, 0]))
    assert not learner.supports[2].any() and not learner.supports[1, 1:].any()
    # prototypes: c0 = (1, 0, 1) / sqrt(2), c1 = (0, 1, 0), c2 = 0; nothing joins while paused
    with tta.paused(learner), torch.no_grad():
        out = learner(torch.tensor([[2.0, 3.0, 4.0]]))
    torch.testing.assert_close(out, torch.tensor([[6 / math.sqrt(2), 3.0, 0.0]]))


@pytest.mark.parametrize("filter_K", [1, 2])
def test_one_admission_and_prediction_by_hand(filter_K: int) -> None:
    """W = I, b = 0: warm-up supports e_0 and e_1, each of entropy h(1). The sample z = (3, 1) (logits (3, 1),
    entropy h(2) < h(1)) joins class 0 and is predicted with it: filter_K = 2 keeps both supports of class 0,
    c0 = z/|z| + e_0; filter_K = 1 keeps z alone, c0 = z/|z|. c1 = e_1 either way."""
    learner = t3a(linear_head([[1, 0], [0, 1]], [0, 0]), filter_K=filter_K)
    z = torch.tensor([[3.0, 1.0]])
    with torch.no_grad():
        out = learner(z)
    unit = [3 / math.sqrt(10), 1 / math.sqrt(10)]
    c0 = [unit[0] + 1, unit[1]] if filter_K == 2 else unit
    norm = math.hypot(*c0)
    torch.testing.assert_close(out, torch.tensor([[(3 * c0[0] + c0[1]) / norm, 1.0]]))
    kept = [binary_entropy(2), binary_entropy(1)][:filter_K]
    torch.testing.assert_close(learner.support_entropy[0], torch.tensor(kept))
    torch.testing.assert_close(learner.supports[0, 0], z[0])


def test_a_less_confident_sample_does_not_displace_a_kept_support() -> None:
    """filter_K = 1: (3, 1) replaces e_0 (entropy h(2) < h(1)); (1, 0.5) (h(0.5)) then joins class 0 and is
    dropped, leaving the prediction of every later batch as before."""
    learner = t3a(linear_head([[1, 0], [0, 1]], [0, 0]), filter_K=1)
    probe = torch.tensor([[0.3, -2.0], [1.0, 1.0]])
    with torch.no_grad():
        learner(torch.tensor([[3.0, 1.0]]))
        with tta.paused(learner):
            before = learner(probe)
        learner(torch.tensor([[1.0, 0.5]]))
        with tta.paused(learner):
            after = learner(probe)
    torch.testing.assert_close(learner.supports[0, 0], torch.tensor([3.0, 1.0]))
    assert torch.equal(before, after)


def official_case(d: int, classes: int, batches: int, n: int, seed: int) -> tuple[nn.Module, list[torch.Tensor]]:
    """The head and batches of the scratch run below: weights, bias and batches drawn in that order."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(classes, d, generator=generator)
    bias = torch.randn(classes, generator=generator)
    xs = [torch.randn(n, d, generator=generator) * 2 for _ in range(batches)]
    return linear_head(weight.tolist(), bias.tolist()), xs


# The official T3A (matsuolab/T3A at ff8cde5, domainbed/adapt_algorithms.py, class T3A) with featurizer =
# Identity, the same nn.Linear and hparams {"filter_K": ..., "cached_loader": True}: `t3a(x, adapt=True)` on each
# batch, then `t3a(batches[0], adapt=False)`; recorded by /work/scratch/t3a/run_official_t3a.py (its
# `case(4, 3, 2, 3, 5, 0)` and `case(5, 4, 1, 2, 6, 1)`), rounded to 6 decimals.
OFFICIAL = {
    (4, 3, 2, 3, 5, 0): [
        [[0.112959, 0.292111, 0.0], [-0.640174, 1.192912, 0.0], [1.646039, -0.356859, 0.0],
         [-3.211367, 4.997768, 0.0], [-0.978638, 1.178165, 0.0]],
        [[-1.316006, -0.213145, 6.037258], [-1.278598, 1.98604, -1.184448], [3.628078, -3.410862, -0.645969],
         [-3.699764, 4.350214, 0.859992], [-1.13027, 1.752977, -1.790214]],
        [[0.205968, -0.316289, 1.829994], [-0.624804, 0.694222, -1.57692], [-0.895552, 0.806607, 0.530641],
         [1.063069, -1.096984, 0.298548], [0.461065, -1.334979, 0.183362]],
        [[-0.58547, 0.338567, 0.864326], [-1.03745, 1.031088, -0.698918], [0.758201, -0.934753, -0.91109],
         [-4.764642, 4.817826, -1.292619], [-2.174876, 1.306267, 1.530318]],
    ],
    (5, 4, 1, 2, 6, 1): [
        [[-1.864268, -1.189067, -0.10676, 0.0], [1.227395, 0.336746, 0.626441, 0.0],
         [-1.713226, -1.878127, 0.660196, 0.0], [1.363232, 3.46028, -2.695108, 0.0],
         [-1.167665, -1.029461, 0.431094, 0.0], [-1.973004, -3.304918, 4.243222, 0.0]],
        [[1.446621, -0.197141, -2.433093, -0.190153], [-2.296712, 4.050876, -1.457854, 0.354213],
         [1.330833, -1.149051, -0.027408, 0.902668], [-3.703585, 2.415751, 2.815028, 1.136709],
         [2.445951, 0.603661, -0.679474, 6.903627], [0.958921, -1.779066, 0.382258, -1.524652]],
        [[-1.864268, 1.319212, -0.10676, -2.680069], [1.227395, -1.10308, 0.626441, 2.57586],
         [-1.713226, 0.335593, 0.660196, -3.299012], [1.363232, 1.756927, -2.695108, 1.99416],
         [-1.167665, 0.200442, 0.431094, -2.806626], [-1.973004, -1.527076, 4.243222, -0.41763]],
    ],
}  # fmt: skip


@pytest.mark.parametrize("case", OFFICIAL)
def test_outputs_match_the_official_t3a(case: tuple[int, ...]) -> None:
    d, classes, filter_K, batches, n, seed = case
    head, xs = official_case(d, classes, batches, n, seed)
    learner = t3a(head, filter_K)
    with torch.no_grad():
        outs = [learner(x) for x in xs]
        with tta.paused(learner):
            outs.append(learner(xs[0]))
    for out, expected in zip(outs, OFFICIAL[case], strict=True):
        torch.testing.assert_close(out, torch.tensor(expected), rtol=0, atol=2e-6)


def test_a_longer_stream_matches_the_official_t3a() -> None:
    """10 classes, 8 features, filter_K = 5, 6 batches of 16: every predicted class and each batch's sum of
    outputs, from /work/scratch/t3a/run_official_t3a.py's `summary(8, 10, 5, 6, 16, 2)`; every class then holds
    5 supports there, as here."""
    classes = [
        [5, 3, 6, 4, 9, 5, 9, 9, 9, 4, 3, 2, 0, 3, 2, 0], [2, 3, 4, 4, 5, 0, 1, 6, 4, 6, 5, 6, 1, 0, 1, 9],
        [1, 6, 5, 0, 5, 5, 7, 4, 3, 7, 8, 7, 0, 3, 7, 5], [3, 3, 4, 8, 3, 9, 0, 3, 2, 0, 7, 5, 1, 5, 2, 3],
        [8, 8, 0, 2, 9, 4, 5, 4, 7, 2, 1, 1, 5, 4, 4, 7], [9, 5, 7, 4, 9, 5, 6, 3, 0, 9, 6, 9, 5, 3, 0, 5],
    ]  # fmt: skip
    sums = [13.65834, 27.40402, 11.29905, -4.08116, -3.26109, 18.67764]
    head, xs = official_case(8, 10, 6, 16, 2)
    learner = t3a(head, 5)
    with torch.no_grad():
        outs = [learner(x) for x in xs]
    assert [out.argmax(1).tolist() for out in outs] == classes
    torch.testing.assert_close(torch.stack([out.sum() for out in outs]), torch.tensor(sums), rtol=0, atol=2e-5)
    assert torch.isfinite(learner.support_entropy).all()


def test_memory_is_bounded_by_filter_K_supports_per_class() -> None:
    head, xs = official_case(8, 10, 6, 16, 2)
    learner = t3a(head, filter_K=3)
    assert learner.supports.shape == (10, 3, 8) and int(torch.isfinite(learner.support_entropy).sum()) <= 10
    with torch.no_grad():
        for x in xs:
            learner(x)
    assert learner.supports.shape == (10, 3, 8) and learner.support_entropy.shape == (10, 3)
    assert torch.isfinite(learner.support_entropy).all()  # 30 supports kept of the 10 + 96 seen


def test_reset_returns_the_supports_to_the_warmup_supports() -> None:
    head, xs = official_case(8, 10, 3, 16, 2)
    learner = t3a(head, filter_K=2)
    attached = (learner.supports.clone(), learner.support_entropy.clone())
    with torch.no_grad():
        first = learner(xs[0])
        learner(xs[1])
        assert not torch.equal(learner.support_entropy, attached[1])
        tta.reset(learner)
        assert torch.equal(learner.supports, attached[0]) and torch.equal(learner.support_entropy, attached[1])
        assert torch.equal(learner(xs[0]), first)


def test_a_non_finite_sample_joins_no_support_and_keeps_the_models_row() -> None:
    learner = tta.attach_method(tta.adapt(build("small_cnn"), "source"), "t3a", filter_K=4)
    reference = copy.deepcopy(learner)
    x = inputs("small_cnn", 8, seed=3)
    x[5, 0, 1, 1] = float("nan")
    finite = torch.cat([x[:5], x[6:]])
    with torch.no_grad():
        out, expected = learner(x), reference(finite)
        model_row = learner.model(x[5:6])
    torch.testing.assert_close(torch.cat([out[:5], out[6:]]), expected)
    torch.testing.assert_close(out[5:6], model_row, equal_nan=True)
    assert torch.equal(learner.supports, reference.supports)
    assert torch.equal(learner.support_entropy, reference.support_entropy)


def test_the_last_output_of_its_model_is_the_policy_alones() -> None:
    alone = tta.adapt(build("small_cnn"), "rbn")
    learner = tta.attach_method(copy.deepcopy(alone), "t3a")
    assert learner.output_level
    outputs: list[torch.Tensor] = []
    learner.model.register_forward_hook(lambda module, args, output: outputs.append(output))
    with torch.no_grad():
        for seed in range(3):
            x = inputs("small_cnn", 8, seed)
            refined = learner(x)
            assert torch.equal(outputs[-1], alone(x))
    assert not torch.equal(outputs[-1], refined)


def test_a_model_without_a_linear_classifier_is_refused() -> None:
    model = tta.adapt(give_source_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))), "tbn")
    with pytest.raises(ValueError, match=r"t3a starts its supports .* last nn.Linear, and Sequential has none"):
        tta.attach_method(model, "t3a")


class Doubled(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x], 1)


def test_a_model_whose_outputs_are_not_the_classifiers_classes_is_refused_before_any_state_changes() -> None:
    model = give_source_statistics(nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3), Doubled()))
    learner = tta.attach_method(tta.adapt(model, "tbn"), "t3a")
    before = learner.support_entropy.clone()
    with pytest.raises(
        ValueError, match=r"predicts the 3 classes of the model's last nn\.Linear, and the model returned 6"
    ):
        learner(torch.randn(4, 6))
    assert torch.equal(learner.support_entropy, before)


def test_a_classifier_input_that_is_not_batch_by_features_is_named() -> None:
    model = give_source_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(14, 5), nn.Flatten()))
    learner = tta.attach_method(tta.adapt(model, "tbn"), "t3a")
    with pytest.raises(
        ValueError, match=r"needs the \(batch, 14\) input of the model's last nn.Linear for a batch of 2"
    ):
        learner(torch.randn(2, 3, 16, 16))


def test_detach_removes_the_feature_hook() -> None:
    model = tta.adapt(build("small_cnn"), "rbn")
    learner = tta.attach_method(model, "t3a")
    assert len(model[-1]._forward_pre_hooks) == 1
    assert tta.detach(learner) is model
    assert not model[-1]._forward_pre_hooks


def test_options_are_checked() -> None:
    model = tta.adapt(build("small_cnn"), "tbn")
    assert tta.method_options("t3a") == {"filter_K": 100}
    with pytest.raises(ValueError, match="option 'filter_K' must lie in"):
        tta.attach_method(model, "t3a", filter_K=0)
    with pytest.raises(TypeError, match="option 'filter_K' must be an integer"):
        tta.attach_method(model, "t3a", filter_K=2.0)
    assert not model[-1]._forward_pre_hooks  # nothing attached by a refused option
