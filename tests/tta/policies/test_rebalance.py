"""``rebalance`` (ours): the composition correction worked by hand, the class step, the AdaBN
invariant of its pool, a stream of one-class batches whose balanced mean is known by construction, and the
policy's predictions against those of the policy before its output step became the method ``prior_refine``."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import tta
import tta_streams
from tests.tta.conftest import build, give_source_statistics, inputs
from tta.composition import predicted_classes
from tta.policies.rebalance import RebalancedBatchNorm
from tta_bench.models import load_bundled_model


def layer_1d(num_classes: int = 2, **options: object) -> RebalancedBatchNorm:
    """One channel, source mean 0 and variance 1, no affine transform: outputs are the normalized values."""
    return RebalancedBatchNorm(nn.BatchNorm1d(1, affine=False).eval(), num_classes=num_classes, **options)


def learn(layer: RebalancedBatchNorm, labels: list[int]) -> None:
    """What the model's hook does after the forward, for one layer: learn from the predicted labels."""
    learn_layers([layer], labels)


def test_one_class_pooled_moments_give_back_the_balanced_statistics() -> None:
    """m = 1, s = 2; class 0 at z-mean +1, class 1 at -1, both z-second moment 2 (within variance 1): class 0
    is N(3, 4), class 1 N(-1, 4), their equal mixture has mean 1 and variance 4 + 4 = 8. A pool of class 0
    only (M1 = 3, M2 = 4 + 9) and a half-and-half pool (M1 = 1, M2 = 8 + 1) must both give (1, 8)."""
    layer = layer_1d()
    layer.class_offset.copy_(torch.tensor([[1.0], [-1.0]]))
    layer.class_square.copy_(torch.tensor([[2.0], [2.0]]))
    for moment1, moment2, composition in [(3.0, 13.0, [1.0, 0.0]), (1.0, 9.0, [0.5, 0.5])]:
        mean, var = layer.balanced_stats(torch.tensor([moment1]), torch.tensor([moment2]), torch.tensor(composition))
        torch.testing.assert_close(mean, torch.tensor([1.0]))
        torch.testing.assert_close(var, torch.tensor([8.0]))


def test_the_balanced_statistics_do_not_depend_on_the_coordinates_the_classes_were_measured_in() -> None:
    """z' = alpha z + delta maps a class's (a, q) to (alpha a + delta, alpha^2 q + 2 alpha delta a + delta^2)."""
    layer = layer_1d(num_classes=3)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(3, 1, generator=generator)
    q = a.square() + torch.rand(3, 1, generator=generator) + 0.1
    pooled = (torch.tensor([0.7]), torch.tensor([2.5]), torch.tensor([0.6, 0.3, 0.1]))
    layer.class_offset.copy_(a)
    layer.class_square.copy_(q)
    before = layer.balanced_stats(*pooled)
    alpha, delta = 1.7, -0.4
    layer.class_offset.copy_(alpha * a + delta)
    layer.class_square.copy_(alpha**2 * q + 2 * alpha * delta * a + delta**2)
    after = layer.balanced_stats(*pooled)
    torch.testing.assert_close(after, before)


def test_a_first_batch_is_normalized_with_its_own_statistics_and_teaches_the_classes_their_moments() -> None:
    layer = layer_1d()
    x = torch.tensor([[1.0], [3.0]])
    with torch.no_grad():
        out = layer(x)
    # beta_1 = 1, nothing learnt: the batch's mean 2 and biased variance 1
    torch.testing.assert_close(out, (x - 2) / torch.sqrt(torch.tensor(1 + 1e-5)))
    learn(layer, [0, 1])
    # z = (x - 2) / 1 = -1, +1 and z^2 = 1, each class's first samples: a = (-1, 1), q = (1, 1)
    torch.testing.assert_close(layer.class_offset, torch.tensor([[-1.0], [1.0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.class_square, torch.tensor([[1.0], [1.0]]), atol=1e-4, rtol=0)  # eps: 1e-5
    torch.testing.assert_close(layer.composition, torch.tensor([0.5, 0.5]))


def test_a_class_keeps_a_running_mean_over_at_most_class_memory_samples() -> None:
    layer = layer_1d(class_memory=2.0, pool_momentum=1.0)  # each batch normalized by its own statistics
    with torch.no_grad():
        for x, labels in [([1.0, 3.0], [0, 1]), ([0.0, 4.0, 2.0, 2.0], [0, 1, 1, 1])]:
            layer(torch.tensor(x)[:, None])
            learn(layer, labels)
    # batch 2: mean 2, variance 2; z = (-2, 2, 0, 0) / sqrt(2). Class 1: 1 old sample, 3 new, rate 3/4:
    # a_1 = 1 + 3/4 (mean(sqrt 2, 0, 0) - 1); class 0: 1 old, 1 new, rate 1/2: a_0 = -1 + 1/2 (-sqrt 2 + 1)
    r2 = 2**0.5
    torch.testing.assert_close(
        layer.class_offset[:, 0], torch.tensor([-1 + 0.5 * (-r2 + 1), 1 + 0.75 * (r2 / 3 - 1)]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(layer.class_count, torch.tensor([2.0, 4.0]))  # the memory caps the old count at 2


def two_layers_after_one_batch(seed: int = 0) -> tuple[RebalancedBatchNorm, RebalancedBatchNorm, list[int]]:
    """A 2-channel and a 3-channel layer (3 classes) that each normalized a batch of 6 and wait for the labels."""
    generator = torch.Generator().manual_seed(seed)
    layers = (RebalancedBatchNorm(give_source_statistics(nn.BatchNorm2d(c)), num_classes=3) for c in (2, 3))
    pair = []
    with torch.no_grad():
        for layer in layers:
            layer(torch.randn(6, layer.num_features, 4, 4, generator=generator) * 2 + 1)
            pair.append(layer)
    return pair[0], pair[1], [2, 0, 2, 2, 1, 2]


def learn_layers(layers: list[RebalancedBatchNorm], labels: list[int]) -> None:
    y = torch.tensor(labels)
    prediction = predicted_classes(
        nn.functional.one_hot(y, layers[0].num_classes).float(), layers[0].num_classes, torch.float32
    )
    shared = layers[0].shared_estimates(prediction)
    RebalancedBatchNorm.learn_classes(layers, y, prediction.classes, prediction.inverse, shared)


def test_layers_learnt_together_hold_what_each_learns_alone() -> None:
    """The hook learns every layer in one pass over their moments side by side: no channel of one layer
    may reach another's rows, and each must end as if it had learnt alone."""
    small, large, labels = two_layers_after_one_batch()
    alone = [copy.deepcopy(small), copy.deepcopy(large)]
    learn_layers([small, large], labels)
    for layer in alone:
        learn_layers([layer], labels)
    for together, single in zip((small, large), alone):
        for name, buffer in together.state_dict().items():
            torch.testing.assert_close(buffer, single.state_dict()[name], rtol=0, atol=0, msg=name)
    assert small.class_count[1] == 1 and small.class_count[2] == 4  # something was learnt


def test_one_layer_with_a_non_finite_batch_leaves_every_layer_unchanged() -> None:
    small, large, labels = two_layers_after_one_batch()
    before = [copy.deepcopy(small.state_dict()), copy.deepcopy(large.state_dict())]
    pending = list(large.pending)
    pending[0] = pending[0].clone().index_fill_(0, torch.tensor([3]), float("nan"))  # one sample's instance mean
    large.pending = tuple(pending)
    learn_layers([small, large], labels)
    for layer, state in zip((small, large), before):
        for name, buffer in layer.state_dict().items():
            torch.testing.assert_close(buffer, state[name], rtol=0, atol=0, equal_nan=True, msg=name)


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
    labels = [torch.arange(batch) % 2] * 10 + [
        torch.full((batch,), r % 2) for r in range(runs) for _ in range(run_length)
    ]
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


@pytest.mark.parametrize("prior, pool_momentum, max_error", [("previous", None, 0.25), ("uniform", 1.0, 2.0)])
def test_runs_of_one_class_keep_the_balanced_mean_only_with_the_correction(
    prior: str, pool_momentum: float | None, max_error: float
) -> None:
    model = tta.adapt(oracle_model(), "rebalance", prior=prior, pool_momentum=pool_momentum)
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


def pending_batch(layer: RebalancedBatchNorm, z: list[float], z_square: list[float]) -> None:
    """A batch normalized with mean 0 and variance 1 whose samples have instance moments ``z`` and raw
    second moments ``z_square``, as the layer leaves it for the model's hook."""
    mean, second = torch.tensor(z)[:, None], torch.tensor(z_square)[:, None]
    layer.pending = (mean, second - mean.square(), torch.zeros(1), torch.ones(1) - layer.eps)


def test_the_change_detector_measures_what_the_predicted_classes_do_not_explain() -> None:
    """Class 0 at (a, q) = (3, 10), class 1 at (1, 2): c = 2, r = 6 - 4 = 2, so in the balanced frame class 0
    has mean 1/sqrt 2 and second moment (10 - 12 + 4) / 2 = 1, class 1 -1/sqrt 2 and 1. A batch of class 0
    only, at exactly its moments, is a label run: no drift. Shifted by 0.6 with second moments x 2.25, the
    residuals are 0.6 and log 2.25; with 64 samples and a window of 128 the running ones are half of them:
    0.3^2 + (log 1.5)^2 = 0.2544 > 0.25, a change, after which the running residuals restart at 0."""
    layer = layer_1d(change_window=128.0, change_threshold=0.25)
    layer.class_offset.copy_(torch.tensor([[3.0], [1.0]]))
    layer.class_square.copy_(torch.tensor([[10.0], [2.0]]))
    layer.steps.fill_(5)
    run = torch.zeros(64, dtype=torch.long)
    pending_batch(layer, [2**-0.5] * 64, [1.0] * 64)
    assert not layer.domain_changed(run)
    torch.testing.assert_close(layer.drift, torch.zeros_like(layer.drift), atol=1e-6, rtol=0)
    pending_batch(layer, [2**-0.5 + 0.6] * 64, [2.25] * 64)
    assert layer.domain_changed(run)
    assert torch.equal(layer.drift, torch.zeros_like(layer.drift))
    layer.change_threshold = 0.26  # the same batch again, now below the threshold: its drift is kept
    pending_batch(layer, [2**-0.5 + 0.6] * 64, [2.25] * 64)
    assert not layer.domain_changed(run)
    expected = torch.tensor([[0.3], [math.log(1.5)]], dtype=layer.drift.dtype)
    torch.testing.assert_close(layer.drift, expected, rtol=1e-5, atol=1e-6)


def test_after_a_restart_the_old_pool_counts_as_one_batch() -> None:
    layer = layer_1d(prior="uniform", pool_momentum=0.01)
    with torch.no_grad():
        for value in (1.0, 3.0, 5.0):  # a cumulative mean: 3
            layer(torch.tensor([[value - 1], [value + 1]]))
        layer.restart_pool(torch.tensor(False))
        assert layer.pool_age == 3 and layer.restarts == 0
        layer.restart_pool(torch.tensor(True))
        layer(torch.tensor([[10.0], [12.0]]))
    assert layer.restarts == 1
    torch.testing.assert_close(layer.moment1, torch.tensor([(3.0 + 11.0) / 2], dtype=layer.moment1.dtype))


def test_a_run_of_one_class_is_no_change_and_a_shifted_domain_is() -> None:
    """The two-class stream's one-class runs restart nothing; the same stream moved by 3 (a new domain,
    1.5 balanced standard deviations) restarts the pool at its first batch."""
    model = tta.adapt(oracle_model(), "rebalance")
    stream = two_class_stream(runs=6, run_length=5, batch=32)
    with torch.no_grad():
        for x, _ in stream:
            model(x)
        assert model[0].restarts == 0
        model(stream[-1][0] + 3.0)
    assert model[0].restarts == 1 and model[0].pool_age == 1


def test_without_change_detection_and_with_a_pool_at_momentum_the_pool_is_the_ema_of_the_batches() -> None:
    layer = layer_1d(prior="uniform", detect_changes=False, pool_momentum=0.5, reference_batch=2)  # rates per batch
    with torch.no_grad():
        for value in (2.0, 4.0, 8.0):  # beta 1, 1/2, then 1/2: 2, 3, 5.5
            layer(torch.tensor([[value - 1], [value + 1]]))
    torch.testing.assert_close(layer.moment1, torch.tensor([5.5], dtype=layer.moment1.dtype))


@pytest.mark.parametrize("batch", [16, 64])
def test_the_rates_are_per_image_so_four_batches_of_16_weigh_as_one_of_64(batch: int) -> None:
    """``pool_momentum=0.5`` per 64 images: past the cumulative mean, 64 images of mean 8 leave the old pool
    (mean 0) with weight 1/2 whatever the batch: one batch at 1/2, or four at 1 - 2^(-1/4)."""
    layer = layer_1d(prior="uniform", detect_changes=False, pool_momentum=0.5)
    pair = torch.tensor([[-1.0], [1.0]]).repeat(batch // 2, 1)
    with torch.no_grad():
        layer(pair)
        layer.pool_age.fill_(100)  # 1/n below the floor from here
        for _ in range(64 // batch):
            layer(pair + 8.0)
    torch.testing.assert_close(layer.moment1, torch.tensor([4.0], dtype=layer.moment1.dtype))


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
    assert tta.policy_layers(tta.adapt(model, "rebalance", num_classes=4))


def test_detach_removes_the_hook() -> None:
    model = tta.adapt(build("small_cnn"), "rebalance")
    assert len(model._forward_hooks) == 1 and not model[-1]._forward_pre_hooks  # no classifier hook: no refinement
    detached = tta.detach(model)
    assert not detached._forward_hooks


def test_the_change_detection_switch_takes_a_bool_only() -> None:
    for value in (1, "True", None):
        with pytest.raises(TypeError, match="option 'detect_changes' must be a bool"):
            tta.adapt(build("small_cnn"), "rebalance", detect_changes=value)


@pytest.mark.parametrize(
    "option, value, hint",
    [
        ("correct_outputs", True, r'no longer takes correct_outputs=True.*"prior_refine"'),
        ("refine", True, r'no longer takes refine=True.*"prior_refine"'),
        ("correct_outputs", False, r"leaves the outputs as the model gives them, so drop it.*prior_refine"),
        ("refine", False, r'method prior_refine with refine=False: .*"prior_refine", refine=False\)'),
        ("refine", 1, r"no longer takes refine=1.*prior_refine"),
    ],
)
def test_the_retired_output_options_name_the_method_before_anything_changes(
    option: str, value: object, hint: str
) -> None:
    model = build("small_cnn")
    with pytest.raises(ValueError, match=hint):
        tta.adapt(model, "rebalance", **{option: value})
    assert not tta.policy_layers(model) and not model._forward_hooks


def settled_model(batches: int = 3) -> nn.Module:
    """``rebalance`` after a few batches, with rho = 1 and a pool whose share of a new batch is negligible
    (``pool_momentum`` 1e-9 past a long pool): an adapting forward then normalizes as a paused one does."""
    model = tta.adapt(build("small_cnn"), "rebalance", pool_momentum=1e-9, detect_changes=False)
    with torch.no_grad():
        for seed in range(batches):
            model(inputs("small_cnn", 16, seed))
    for _, layer in tta.policy_layers(model):
        layer.pool_age.fill_(10**9)
        layer.lag_products.copy_(torch.tensor([1.0, 1.0]))
    return model


def test_the_output_is_the_model_s_own_and_a_paused_forward_changes_nothing() -> None:
    """No output step: the adapting and the paused forward return the logits of the model's last layer
    (read by a hook on it), and on a settled state they agree; the paused one changes no state."""
    model = settled_model()
    seen = []
    model[-1].register_forward_hook(lambda module, args, out: seen.append(out))
    for seed in range(3, 6):
        x = inputs("small_cnn", 16, seed)
        paused = copy.deepcopy(model)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad(), tta.paused(paused):
            got = paused(x)
        assert all(torch.equal(v, paused.state_dict()[k]) for k, v in state.items())
        with torch.no_grad():
            expected = model(x)
        assert torch.equal(expected, seen[-1])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_non_finite_image_leaves_the_other_rows_and_the_estimates_as_without_it() -> None:
    """One NaN image among 16: its row stays NaN and counts in no estimate; the 15 other rows are what the
    15 finite images alone give (the pool ignores the batch either way: its share is negligible here)."""
    model = settled_model()
    x = inputs("small_cnn", 16, seed=7)
    x[5, 0, 3, 3] = float("nan")
    finite = torch.cat([x[:5], x[6:]])
    alone = copy.deepcopy(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out, expected = model(x), alone(finite)
    assert torch.isnan(out[5]).all()
    torch.testing.assert_close(torch.cat([out[:5], out[6:]]), expected, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # a non-finite batch


class Frames(nn.Module):
    """A clip model: (B, T, C, H, W) frames through one BatchNorm as B * T images, averaged over T."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.features(x.flatten(0, 1))
        return self.head(frames.view(*x.shape[:2], -1).mean(1))


def test_a_batchnorm_that_sees_more_samples_than_the_model_predicts_is_named_before_any_state_changes() -> None:
    model = tta.adapt(give_source_statistics(Frames()), "rebalance")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="predicted 2 samples for a batch of 6 at this layer; rebalance needs every"):
        with torch.no_grad():
            model(torch.randn(2, 3, 3, 8, 8))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


class NanFirstRow(nn.Module):
    """Logits of the first sample made NaN after the classifier (an overflow), every BatchNorm input finite."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.full_like(x[:1], float("nan")), x[1:]])


def test_a_sample_with_a_non_finite_output_teaches_no_class() -> None:
    """The classes learn from the other samples' predictions only: the counts are those of their argmax."""
    model = give_source_statistics(nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3), NanFirstRow()))
    model = tta.adapt(model, "rebalance")
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(0)) * 2 + 1
    with torch.no_grad():
        out = model(x)
        labels = out.argmax(1)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1:]).all()
    expected = torch.bincount(labels[1:], minlength=3).to(model[0].class_count.dtype)
    assert torch.equal(model[0].class_count, expected)


# Today's rebalance before its output step became the method prior_refine, with correct_outputs=False and
# refine=False, on the bundled model: per batch of 64 the argmax of the 64 logits, and the sum of the logits and
# of their squares. Recorded from the code before the split by /work/scratch/split/record_today.py (run with
# that code's interpreter) and printed by gen_literal.py (BEFORE_THE_SPLIT "dirichlet:0.1,iid" statistics).
BEFORE_THE_SPLIT = {
    "dirichlet:0.1": (
        [
            "6601002880852603569085590898538999059477954206669009626484066669",
            "6660936933663906360906922624690696852848055955505588000805886850",
            "6303069638022226902262200464686669482804004440246060465666442244",
            "6046606866006326066005660000006206620000291913111191121111882681",
            "0161121531911191611639129160666060006895858328086832546688588008",
            "6888629855898099205059957552089908922664566628660099666666220436",
            "6664622665660636699099097958995980959695009008622296024466040888",
            "8585998686622628646324250624822026226226263226022622636220264628",
        ],
        [
            (-15.148221, 399.450267),
            (-15.279216, 426.959495),
            (-11.245693, 442.103586),
            (-13.077257, 442.361949),
            (-14.481753, 470.921553),
            (-16.024395, 488.658833),
            (-14.539752, 483.691938),
            (-13.901998, 577.494061),
        ],
    ),
    "iid": (
        [
            "2123545099540018158465963808831239600620666674688896502600486956",
            "5998609004694626262392059905558971954016641290856150668027656624",
            "1381689964105386824266111266056276262681639300015206096162063935",
            "6104853660364596226953429895259369380006664686640548266670266652",
            "0594110625802699469586039640660408980692687066208862032081650099",
            "3848240330989201086831869056050294411688806598236604260200184006",
            "0025664655004409865719014645828360904020999889665100623851986309",
            "5926591666228286858002006310665955432512609220608606969466056620",
        ],
        [
            (-15.345576, 522.811590),
            (-14.986047, 552.716316),
            (-13.711392, 528.816184),
            (-13.462597, 511.399056),
            (-14.105936, 441.480067),
            (-13.904798, 508.301389),
            (-15.911031, 501.620038),
            (-17.186130, 515.957446),
        ],
    ),
}


def fog_stream(order: str) -> list[torch.Tensor]:
    """512 Fashion-MNIST images with fog at severity 5, in batches of 64, i.i.d. or Dirichlet-sorted labels."""
    stream = tta_streams.Stream(
        "fmnist", corruptions=["fog"], severities=5, n_examples=512, batch_size=64, order=order, seed=0
    )
    return [batch.x for batch in stream]


@pytest.mark.parametrize("order", list(BEFORE_THE_SPLIT))
def test_the_policy_alone_predicts_as_before_the_split_without_its_output_step(order: str) -> None:
    argmax, sums = BEFORE_THE_SPLIT[order]
    model = tta.adapt(load_bundled_model().eval(), "rebalance")
    with torch.no_grad():
        logits = [model(x) for x in fog_stream(order)]
    assert ["".join(map(str, out.argmax(1).tolist())) for out in logits] == argmax
    got = torch.tensor([(out.double().sum(), out.double().square().sum()) for out in logits], dtype=torch.float64)
    torch.testing.assert_close(got, torch.tensor(sums, dtype=torch.float64), rtol=1e-5, atol=1e-3)
