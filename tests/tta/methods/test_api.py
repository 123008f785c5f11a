"""The methods layer's contract (docs/concepts.md): registry, options, errors, the stats_grad switch, eval mode
and dropout, the global RNG, inference mode, nesting in a bigger model, casts."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tta
from tests.tta.conftest import build, give_source_statistics, inputs
from tests.tta.methods.conftest import TEST_OPTIONS, assert_same, learner, run, snapshot
from tta.methods.base import GradientMethod


def test_methods_and_their_options_are_listed() -> None:
    assert tta.list_methods() == ["none", "tent", "rotta", "dua", "lame", "prior_refine", "t3a", "roid_prior", "cofa"]
    assert tta.method_options("lame") == {"affinity": "knn", "knn": 5, "force_symmetry": False}
    assert tta.method_options("none") == {}
    assert tta.method_options("tent") == {
        "lr": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "weight_decay": 0.0,
        "steps": 1,
        "episodic": False,
    }
    assert tta.get_method("tent").method_name == "tent"


def test_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown method 'note'; known methods: none, tent, rotta, dua, lame"):
        tta.attach_method(tta.adapt(build("small_cnn"), "tbn"), "note")


def test_unknown_option_names_the_accepted_ones() -> None:
    model = tta.adapt(build("small_cnn"), "tbn")
    with pytest.raises(ValueError, match=r"method 'tent' has no option 'momentum'; it takes: lr=0.001, beta1=0.9"):
        tta.attach_method(model, "tent", momentum=0.9)
    with pytest.raises(ValueError, match="method 'none' has no option 'lr'; it takes: none"):
        tta.attach_method(model, "none", lr=0.1)
    assert all(p.requires_grad for p in model.parameters()), "a refused option must leave the model untouched"


# (option, values refused for their type, values refused for their range, values accepted), by hand
TENT_CASES = [
    ("lr", ["0.001", None, True], [0.0, -1e-3, 1.5, 1e308, float("nan"), float("inf")], [1e-4, 1, np.float32(0.01)]),
    ("beta1", [None], [1.0, -0.1], [0.0, 0.5]),
    ("beta2", ["0.999"], [1.0, 1.5], [0.0, 0.99]),
    ("weight_decay", [False], [-1e-4, float("nan")], [0.0, 1e-2]),
    ("steps", [1.0, 1.5, "1", True], [0, -1], [1, np.int64(3)]),
    ("episodic", [0, 1, 1.0, "True", None], [], [True, False, np.bool_(True)]),
]


@pytest.mark.parametrize("option, wrong_type, out_of_range, accepted", TENT_CASES)
def test_each_tent_option_is_checked_for_type_and_range(
    option: str, wrong_type: list[object], out_of_range: list[object], accepted: list[object]
) -> None:
    model = tta.adapt(build("small_cnn"), "tbn")
    for value in wrong_type:
        with pytest.raises(TypeError, match=f"method 'tent' option '{option}' must be an? (integer|real number|bool)"):
            tta.attach_method(model, "tent", **{option: value})
    for value in out_of_range:
        with pytest.raises(ValueError, match=f"method 'tent' option '{option}' must (lie in|be finite)"):
            tta.attach_method(model, "tent", **{option: value})
    for value in accepted:
        stored = getattr(tta.attach_method(tta.adapt(build("small_cnn"), "tbn"), "tent", **{option: value}), option)
        assert stored == value and type(stored) is type(tta.method_options("tent")[option])


@pytest.mark.parametrize("method", tta.list_methods())
def test_every_learning_rate_lies_in_0_to_1(method: str) -> None:
    """Adam moves each parameter by about ``lr`` per step, and the affine parameters are of order 1."""
    for option in {"lr"} & set(tta.method_options(method)):
        assert tta.registry.check_method_options(method, {option: 1.0}) == {option: 1.0}
        with pytest.raises(ValueError, match=rf"method '{method}' option '{option}' must lie in \(0, 1\], got 1.01"):
            tta.attach_method(tta.adapt(build("small_cnn"), "rbn"), method, **{option: 1.01})


def test_every_declared_tent_option_has_a_case_here() -> None:
    assert {case[0] for case in TENT_CASES} == set(tta.method_options("tent"))


@pytest.mark.parametrize("method", tta.list_methods())
def test_a_model_without_policy_layers_is_refused(method: str) -> None:
    with pytest.raises(ValueError, match=r"swapped by tta.adapt\(model, policy\); Sequential has no policy layer"):
        tta.attach_method(build("small_cnn"), method)
    with pytest.raises(ValueError, match="has no policy layer"):
        tta.get_method(method)(build("small_cnn"))


def test_attaching_twice_or_adapting_a_learner_is_refused() -> None:
    tent = learner("small_cnn", "tbn")
    with pytest.raises(ValueError, match="already has a method attached"):
        tta.attach_method(tent, "tent")
    with pytest.raises(ValueError, match="already adapted"):
        tta.adapt(tent, "rbn")


def test_tent_refuses_normalization_layers_without_affine_parameters() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False)).eval()
    with pytest.raises(ValueError, match="affine parameters; this model's have none"):
        tta.attach_method(tta.adapt(model, "tbn"), "tent")


@pytest.mark.parametrize("policy", tta.list_policies())
def test_none_is_the_policy_alone(policy: str, model_name: str) -> None:
    plain = tta.adapt(build(model_name), policy)
    wrapped = learner(model_name, policy, "none")
    for a, b in zip(run(plain, model_name, range(3)), run(wrapped, model_name, range(3))):
        assert torch.equal(a, b)


def test_tbn_with_stats_grad_has_the_gradient_of_train_mode_batchnorm() -> None:
    bn = give_source_statistics(nn.BatchNorm2d(5))
    layer = tta.adapt(nn.Sequential(bn), "tbn")[0]
    x = (torch.randn(4, 5, 3, 3, generator=torch.Generator().manual_seed(0)) * 2 + 1).requires_grad_()
    weight = torch.linspace(-1, 1, 45).view(1, 5, 3, 3)

    def grads(out: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.autograd.grad((out * weight).sum(), [x, bn.weight, bn.bias]))

    expected = grads(F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps))
    detached_stats = grads(layer(x))
    layer.stats_grad = True
    for got, want in zip(grads(layer(x)), expected):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(detached_stats[0], expected[0], atol=1e-3)  # the switch matters for x


def plain_normalize(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """The normalization written out, differentiable in the statistics; per channel or per (instance, channel)."""
    view = (*mean.shape, 1, 1) if mean.dim() == 2 else (1, -1, 1, 1)
    return (x - mean.view(view)) / torch.sqrt(var.view(view) + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(
        1, -1, 1, 1
    )


def batch_stats(x: torch.Tensor, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=unbiased)


def instance_stats(x: torch.Tensor, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(2, 3)), x.var(dim=(2, 3), unbiased=unbiased)


def rbn_mix(x: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """RoTTA's RobustBN: the source statistics moved by alpha = 0.05 towards the batch's (biased)."""
    mean, var = batch_stats(x, unbiased=False)
    return 0.95 * bn.running_mean + 0.05 * mean, 0.95 * bn.running_var + 0.05 * var


# policy, options, the statistics of the first adapting forward written out with autograd (docs/policies/index.md
# at options where they reduce to plain batch or instance statistics, and rbn's mix at its default).
STATS_WITH_GRADIENT = [
    ("tbn", {}, lambda x, bn: batch_stats(x, unbiased=False)),
    ("adabn", {}, lambda x, bn: batch_stats(x, unbiased=False)),  # the first batch is the whole pool
    ("alpha_bn", {"alpha": 1.0}, lambda x, bn: batch_stats(x, unbiased=True)),
    ("momentum_decay", {"momentum": 1.0, "decay": 1.0, "min_momentum": 0.0}, lambda x, bn: batch_stats(x, True)),
    ("rbn", {"alpha": 1.0}, lambda x, bn: batch_stats(x, unbiased=False)),
    ("rbn", {}, rbn_mix),
    ("adab2n", {"momentum": 1.0, "kappa": 1.0}, lambda x, bn: batch_stats(x, unbiased=False)),
    ("iabn", {"k": 0.0}, lambda x, bn: instance_stats(x, unbiased=True)),  # no shrinkage: instance statistics
    ("unmix_tns", {"num_components": 1}, lambda x, bn: instance_stats(x, unbiased=False)),  # p = 1: the instance
    ("source", {}, lambda x, bn: (bn.running_mean, bn.running_var)),
]


@pytest.mark.parametrize(("policy", "options", "statistics"), STATS_WITH_GRADIENT)
def test_stats_grad_lets_the_gradient_through_the_batch_share_of_the_statistics(
    policy: str, options: dict, statistics
) -> None:
    """With ``stats_grad`` the gradient w.r.t. the input and the affine parameters is that of the
    normalization with the statistics written out differentiably; without it, the statistics are constants."""
    bn = give_source_statistics(nn.BatchNorm2d(5))
    assert tta.registry.get_policy(policy)  # registered
    x = (torch.randn(4, 5, 3, 3, generator=torch.Generator().manual_seed(0)) * 2 + 1).requires_grad_()
    weight = torch.linspace(-1, 1, 180).view(4, 5, 3, 3)

    def grads(out: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.autograd.grad((out * weight).sum(), [x, bn.weight, bn.bias]))

    mean, var = statistics(x, bn)
    expected = grads(plain_normalize(x, mean, var, bn))
    constant = grads(plain_normalize(x, mean.detach(), var.detach(), bn))
    for stats_grad, want in ((True, expected), (False, constant)):
        layer = tta.adapt(nn.Sequential(copy.deepcopy(bn)), policy, **options)[0]
        layer.weight, layer.bias = bn.weight, bn.bias  # the same parameters as the expectation's
        layer.stats_grad = stats_grad
        for got, value in zip(grads(layer(x)), want):
            torch.testing.assert_close(got, value, rtol=1e-4, atol=1e-5)
        for buffer in layer.buffers():
            assert not buffer.requires_grad, "a state buffer joined the graph"
    if policy != "source":
        assert not torch.allclose(expected[0], constant[0], atol=1e-3)  # the switch matters for x


def test_dropout_stays_off_under_tent() -> None:
    def with_dropout(drop: nn.Module) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            conv, head = nn.Conv2d(3, 8, 3), nn.Linear(288, 10)
        return give_source_statistics(nn.Sequential(conv, nn.BatchNorm2d(8), nn.ReLU(), drop, nn.Flatten(), head))

    tent = tta.attach_method(tta.adapt(with_dropout(nn.Dropout(0.5)), "tbn"), "tent")
    reference = tta.attach_method(tta.adapt(with_dropout(nn.Identity()), "tbn"), "tent")
    for seed in range(3):
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(tent(x), reference(x))
    assert not tent.model[3].training


def test_tent_does_not_touch_the_global_random_state() -> None:
    state = torch.get_rng_state()
    tent = learner("resnet18", "unmix_tns")
    run(tent, "resnet18", range(2))
    assert torch.equal(torch.get_rng_state(), state)


def test_tent_adapts_inside_inference_mode_as_outside() -> None:
    inside, outside = learner("mlp_bn1d", "tbn"), learner("mlp_bn1d", "tbn")
    xs = [inputs("mlp_bn1d", 4, seed) for seed in range(3)]
    with torch.inference_mode():
        got = [inside(x.clone()) for x in xs]
    for x, out in zip(xs, got):
        assert torch.equal(out, outside(x))
    # adapted and attached inside inference mode, it still adapts outside it
    model = build("mlp_bn1d")
    with torch.inference_mode():
        late = tta.attach_method(tta.adapt(model, "tbn"), "tent")
    assert torch.equal(late(xs[0]), learner("mlp_bn1d", "tbn")(xs[0]))


def test_a_learner_inside_a_bigger_model_is_reset_paused_and_detached() -> None:
    original = build("small_cnn")
    bigger = nn.Sequential(nn.Identity(), tta.attach_method(tta.adapt(original, "rbn"), "tent"))
    x = inputs("small_cnn", 4, 0)
    first = bigger(x)
    assert len(tta.policy_layers(bigger)) == 2
    with tta.paused(bigger):
        state = {k: v.clone() for k, v in bigger.state_dict().items() if isinstance(v, torch.Tensor)}
        bigger(x)
        assert all(torch.equal(v, bigger.state_dict()[k]) for k, v in state.items())
    tta.reset(bigger)
    assert torch.equal(bigger(x), first)
    detached = tta.detach(bigger)
    assert detached[1] is original and isinstance(original[1], nn.BatchNorm2d)


def test_casting_a_learner_carries_the_optimizer_state_along() -> None:
    tent = learner("small_cnn", "rbn")
    run(tent, "small_cnn", range(2))
    tent.double()
    out = tent(inputs("small_cnn", 4, 2, torch.float64))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    state = tent.optimizer.state[tent.params[0]]
    assert state["exp_avg"].dtype == torch.float64 and int(state["step"]) == 3
    tta.reset(tent)
    assert tent.initial_affine.dtype == torch.float64 and not tent.optimizer.state


def test_tent_trains_a_parametrized_affine_parameter_through_its_original() -> None:
    class Positive(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w.abs() + 0.1

    model = build("small_cnn")
    torch.nn.utils.parametrize.register_parametrization(model[1], "weight", Positive())
    original = model[1].parametrizations.weight.original
    before = original.detach().clone()
    tent = tta.attach_method(tta.adapt(model, "tbn"), "tent")
    assert sum(p is original for p in tent.params) == 1 and len(tent.params) == 4
    run(tent, "small_cnn", range(2))
    assert not torch.equal(original, before)
    assert tta.detach(tent) is model and torch.equal(original, before)


def test_a_layer_shared_by_two_places_trains_its_parameters_once() -> None:
    shared = nn.BatchNorm1d(4)
    model = give_source_statistics(nn.Sequential(nn.Linear(4, 4), shared, nn.Linear(4, 4), shared))
    tent = tta.attach_method(tta.adapt(model, "tbn"), "tent")
    assert len(tent.layers) == 1 and len(tent.params) == 2
    tent(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)))
    assert int(tent.updates) == 1


@pytest.mark.parametrize("method", tta.list_methods())
def test_a_model_whose_layers_a_learner_holds_takes_no_second_method(method: str) -> None:
    model = tta.adapt(build("small_cnn"), "rbn")
    first = tta.attach_method(model, "tent")
    for target in (model, first, first.model, nn.Sequential(model, nn.Identity())):
        with pytest.raises(ValueError, match="already has a method attached"):
            tta.attach_method(target, method)
    tta.detach(first)
    assert all(p.requires_grad for p in model.parameters()), "the refusals changed the model"


def test_a_model_can_take_a_method_again_once_its_learner_is_detached() -> None:
    model = tta.adapt(build("small_cnn"), "rbn")
    tta.detach(tta.attach_method(model, "tent"), keep_adapted=True)
    weight = model[1].weight.detach().clone()
    again = tta.attach_method(tta.adapt(model, "rbn"), "lame")
    again(inputs("small_cnn", 4, 0))
    assert torch.equal(model[1].weight, weight)  # lame trains nothing


@pytest.mark.parametrize("method", tta.list_methods())
def test_detaching_the_model_under_a_learner_is_refused_before_anything_changes(method: str) -> None:
    model = tta.adapt(build("small_cnn"), "rbn")
    learner = tta.attach_method(model, method, **TEST_OPTIONS.get(method, {}))
    layers = tta.policy_layers(model)
    with pytest.raises(ValueError, match=f"held by a {method} learner wrapping it; detach the learner"):
        tta.detach(model)
    assert tta.policy_layers(model) == layers and not learner.released
    assert tta.detach(learner) is model and not tta.policy_layers(model)  # the learner gives the model back


def test_the_teacher_of_a_rotta_learner_takes_no_method() -> None:
    rotta = tta.attach_method(tta.adapt(build("small_cnn"), "rbn"), "rotta")
    with pytest.raises(ValueError, match="already has a method attached"):
        tta.attach_method(rotta.teacher, "tent")


def test_a_refused_attach_leaves_the_layers_free_for_another_method() -> None:
    model = tta.adapt(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval(), "rbn")
    with pytest.raises(ValueError, match="has none"):
        tta.attach_method(model, "lame")
    assert tta.attach_method(model, "tent").layers == [model[1]]


class Reshaped(nn.Module):
    """A classifier whose (batch, classes) logits ``reshape`` turns into another output, from ``after`` calls on."""

    def __init__(self, model: nn.Module, reshape: Callable[[torch.Tensor], object], after: int = 0) -> None:
        super().__init__()
        self.model, self.reshape, self.after, self.calls = model, reshape, after, 0

    def forward(self, x: torch.Tensor) -> object:
        self.calls += 1
        logits = self.model(x)
        return logits if self.calls <= self.after else self.reshape(logits)


BAD_OUTPUTS = {
    "(B, K, H, W)": lambda y: y[:, :, None, None].expand(-1, -1, 2, 2),
    "(B,)": lambda y: y[:, 0],
    "(B - 1, K)": lambda y: y[1:],
    "tuple": lambda y: (y, y),
    "dict": lambda y: {"logits": y},
}
BAD_OUTPUT_MESSAGE = r"needs \(batch, classes\) logits from the model for a batch of 4; it returned"


@pytest.mark.parametrize("output", BAD_OUTPUTS)
@pytest.mark.parametrize("method", tta.list_methods())
def test_every_method_refuses_an_output_that_is_not_logits_before_any_state_changes(method: str, output: str) -> None:
    model = tta.adapt(Reshaped(build("small_cnn"), BAD_OUTPUTS[output]), "rbn")
    attached = tta.attach_method(model, method, **TEST_OPTIONS.get(method, {}))
    before = snapshot(attached)
    for _ in range(2):
        with pytest.raises(ValueError, match=f"{method} {BAD_OUTPUT_MESSAGE}"):
            attached(inputs("small_cnn", 4, 0))
        assert_same(snapshot(attached), before)


@pytest.mark.parametrize("method", [m for m in tta.list_methods() if issubclass(tta.get_method(m), GradientMethod)])
def test_an_output_that_turns_bad_later_is_refused_before_any_step(method: str) -> None:
    """Good outputs for the first batch (the paused output check and the adapting forward; RoTTA's teacher, a
    copy, also predicts for its update), then (B,) outputs: the second batch's forward fails, and the trained
    parameters and optimizer state are those after the first."""
    model = tta.adapt(Reshaped(build("small_cnn"), BAD_OUTPUTS["(B,)"], after=3 if method == "rotta" else 2), "rbn")
    options = {"update_frequency": 4} if method == "rotta" else {}
    attached = tta.attach_method(model, method, **options)
    attached(inputs("small_cnn", 4, 0))
    trained = copy.deepcopy((attached.params, attached.optimizer.state_dict()))
    assert int(attached.updates) == 1
    with pytest.raises(ValueError, match=f"{method} {BAD_OUTPUT_MESSAGE}"):
        attached(inputs("small_cnn", 4, 1))
    assert_same(copy.deepcopy((attached.params, attached.optimizer.state_dict())), trained)


def test_a_method_name_given_to_adapt_and_a_policy_name_given_to_attach_method_say_where_they_belong() -> None:
    model = build("small_cnn")
    expected = r"unknown policy 'rotta'; .*; 'rotta' is a method: tta\.attach_method\(model, 'rotta'\)"
    with pytest.raises(ValueError, match=expected):
        tta.adapt(model, "rotta")
    with pytest.raises(ValueError, match=r"unknown method 'rbn'; .*; 'rbn' is a policy: tta\.adapt\(model, 'rbn'\)"):
        tta.attach_method(tta.adapt(model, "tbn"), "rbn")


# (kind, name given, the suggestion's end of the message): wrong case and misspellings, by hand
CLOSE_NAMES = [
    ("policy", "RBN", "; did you mean 'rbn'?"),
    ("policy", "momentum_decy", "; did you mean 'momentum_decay'?"),
    ("policy", "Tent", "; 'tent' is a method: tta.attach_method(model, 'tent')"),
    ("method", "rota", "; did you mean 'rotta'?"),
    ("method", "LAME", "; did you mean 'lame'?"),
    ("method", "AdaBN", "; 'adabn' is a policy: tta.adapt(model, 'adabn')"),
    ("method", "xyzzy", "known methods: none, tent, rotta, dua, lame, prior_refine, t3a, roid_prior, cofa"),
]


@pytest.mark.parametrize("kind, name, suggestion", CLOSE_NAMES)
def test_a_wrong_name_is_refused_with_the_closest_known_one(kind: str, name: str, suggestion: str) -> None:
    model = tta.adapt(build("small_cnn"), "tbn") if kind == "method" else build("small_cnn")
    with pytest.raises(ValueError, match=f"unknown {kind} '{name}'") as refused:
        tta.attach_method(model, name) if kind == "method" else tta.adapt(model, name)
    assert str(refused.value).endswith(suggestion)


@pytest.mark.parametrize("method", ["tent", "rotta"])
def test_a_copy_of_a_learner_holds_its_own_layers(method: str) -> None:
    original = tta.attach_method(tta.adapt(build("small_cnn"), "rbn"), method)
    twin = copy.deepcopy(original)
    assert twin.layers[0] is not original.layers[0] and twin.layers[0] is twin.model[1]
    for target in (twin.model, original.model):
        with pytest.raises(ValueError, match="already has a method attached"):
            tta.attach_method(target, "tent")
    if method == "rotta":
        with pytest.raises(ValueError, match="already has a method attached"):
            tta.attach_method(twin.teacher, "tent")
