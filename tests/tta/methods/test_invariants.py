"""A learner (every registered method on every policy) on the small model families, B = 1 and B > 1: reset,
paused, state_dict round trip, detach, episodic, finite outputs (docs/concepts.md); on
``resnet18``, whose 1x1 maps give n = B = 1, every pair once at B = 1. An image-only method (DUA) must
refuse the models whose inputs are not images, with its error."""

from __future__ import annotations

import io

import pytest
import torch

import tta
from tests.tta.conftest import MODELS, build, inputs
from tests.tta.methods.conftest import TEST_OPTIONS, assert_same, learner, refuses, run, snapshot
from tta.options import declared_options

POLICIES = tta.list_policies()
METHODS = tta.list_methods()
BATCHES = [1, 4]
REFUSAL = r"augments image batches \(N, C, H, W\), but this model has only BatchNorm[13]d layers"


@pytest.fixture(params=[name for name in MODELS if name != "resnet18"])
def model_name(request: pytest.FixtureRequest) -> str:
    """The model families small enough for the whole product; ``resnet18`` has its own test below (the
    layers beneath are checked on it for every policy in ``tests/tta/policies/test_contract.py``)."""
    return request.param


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("method", METHODS)
def test_on_resnet18_at_batch_1_outputs_are_finite_and_reset_restores_everything(method: str, policy: str) -> None:
    model = learner("resnet18", policy, method)
    attached = snapshot(model)
    first = run(model, "resnet18", range(2), 1)
    assert all(torch.isfinite(out).all() for out in first)
    tta.reset(model)
    assert_same(snapshot(model), attached)
    for a, b in zip(first, run(model, "resnet18", range(2), 1)):
        assert torch.equal(a, b)


def learner_or_refusal(model_name: str, policy: str, method: str, **options: object) -> tta.Method | None:
    """The learner; or, where the method must refuse the model (:func:`refuses`), None once the refusal
    is asserted."""
    if refuses(method, model_name):
        with pytest.raises(ValueError, match=REFUSAL):
            learner(model_name, policy, method, **options)
        return None
    return learner(model_name, policy, method, **options)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("method", METHODS)
def test_reset_restores_the_attach_state_bit_for_bit(method: str, policy: str, model_name: str, batch: int) -> None:
    if (model := learner_or_refusal(model_name, policy, method)) is None:
        return
    attached = snapshot(model)
    first = run(model, model_name, range(3), batch)
    tta.reset(model)
    assert_same(snapshot(model), attached)
    again = run(model, model_name, range(3), batch)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("method", METHODS)
def test_paused_predicts_with_no_update_at_all(method: str, policy: str, model_name: str, batch: int) -> None:
    if (model := learner_or_refusal(model_name, policy, method)) is None:
        return
    run(model, model_name, range(2), batch)
    state = snapshot(model)
    with tta.paused(model):
        paused_out = run(model, model_name, range(5, 7), batch)
        again = run(model, model_name, range(5, 7), batch)
    assert_same(snapshot(model), state)
    for a, b in zip(paused_out, again):
        assert torch.equal(a, b)
    assert not model.paused and all(not layer.paused for layer in model.layers)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("method", METHODS)
def test_a_fresh_learner_loaded_from_the_state_dict_continues_identically(
    method: str, policy: str, model_name: str, batch: int
) -> None:
    if (model := learner_or_refusal(model_name, policy, method)) is None:
        return
    run(model, model_name, range(3), batch)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = learner(model_name, policy, method, seed=7)  # other weights and statistics, overwritten
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(run(model, model_name, range(3, 7), batch), run(restored, model_name, range(3, 7), batch)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("method", METHODS)
def test_detach_gives_back_the_original_model(method: str, policy: str, model_name: str) -> None:
    model = build(model_name)
    modules = dict(model.named_modules())
    last = list(model.parameters())[-1]
    last.requires_grad_(False)  # a frozen parameter must stay frozen, the others trainable
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before = snapshot(model)
    x = inputs(model_name, 3, 9)
    with torch.no_grad():
        expected = model(x)
    adapted = tta.adapt(model, policy)
    if refuses(method, model_name):
        with pytest.raises(ValueError, match=REFUSAL):
            tta.attach_method(adapted, method, **TEST_OPTIONS.get(method, {}))
        assert tta.detach(adapted) is model and dict(model.named_modules()) == modules  # left as it was
        return
    tent = tta.attach_method(adapted, method, **TEST_OPTIONS.get(method, {}))
    run(tent, model_name, range(3))
    restored = tta.detach(tent)
    assert restored is model and dict(restored.named_modules()) == modules  # the very same objects
    assert_same(snapshot(restored), before)
    assert {name: p.requires_grad for name, p in restored.named_parameters()} == flags
    assert all(p.grad is None for p in restored.parameters())
    assert not restored.training
    with torch.no_grad():
        assert torch.equal(restored(x), expected)
    with pytest.raises(RuntimeError, match="was detached"):
        tent(x)


@pytest.mark.parametrize("policy", ["adabn", "momentum_decay", "rbn", "unmix_tns"])
def test_detach_keep_adapted_keeps_the_trained_affine_parameters_and_bakes_the_statistics(policy: str) -> None:
    tent = learner("small_cnn", policy)
    run(tent, "small_cnn", range(3))
    trained = [p.detach().clone() for p in tent.params]
    held = {name: tuple(t.clone() for t in layer.adapted_stats()) for name, layer in tta.policy_layers(tent.model)}
    baked = tta.detach(tent, keep_adapted=True)
    assert not tta.policy_layers(baked)
    for name, (mean, var) in held.items():
        bn = baked.get_submodule(name.removeprefix("model."))
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    for p, value in zip(tent.params, trained):
        assert torch.equal(p, value)
    assert all(p.requires_grad for p in baked.parameters())


@pytest.mark.parametrize("policy", ["source", "tbn", "alpha_bn"])
def test_detach_keep_adapted_refuses_a_stateless_policy_and_leaves_the_learner_attached(policy: str) -> None:
    tent = learner("small_cnn", policy)
    run(tent, "small_cnn", range(2))
    with pytest.raises(ValueError, match="keeps no statistics"):
        tta.detach(tent, keep_adapted=True)
    assert tent.layers[0].stats_grad and not tent.model[0].weight.requires_grad


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("policy", POLICIES)
def test_episodic_predicts_each_batch_as_a_fresh_learner(policy: str, model_name: str, batch: int) -> None:
    episodic = learner(model_name, policy, episodic=True)
    for seed in range(3):
        x = inputs(model_name, batch, seed)
        assert torch.equal(episodic(x), learner(model_name, policy)(x))


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("policy", POLICIES)
def test_tent_gives_finite_outputs_and_parameters_in_eval_mode(policy: str, model_name: str, batch: int) -> None:
    tent = learner(model_name, policy)
    for out in run(tent, model_name, range(3), batch):
        assert out.shape == (batch, 10) and torch.isfinite(out).all()
    assert all(torch.isfinite(p).all() for p in tent.params)
    assert int(tent.updates) == 3 and not tent.training


def another_value(method: str, option: str) -> object:
    """A value of ``option`` in its range other than the learners' of these tests."""
    declared = declared_options(tta.get_method(method).__init__)[option]
    value = {**tta.method_options(method), **TEST_OPTIONS.get(method, {})}[option]
    if isinstance(value, bool):
        return not value
    if isinstance(value, str):
        return next(choice for choice in declared.choice.values if choice != value)
    if isinstance(value, int):
        return value + 1
    return value / 2 if value else 0.5


@pytest.mark.parametrize(
    "method, option", [(method, option) for method in METHODS for option in tta.method_options(method)]
)
def test_a_learner_refuses_a_state_saved_with_other_options_before_loading_any(method: str, option: str) -> None:
    saved = learner("small_cnn", "rbn", method)
    run(saved, "small_cnn", range(1))
    value = another_value(method, option)
    options = {**TEST_OPTIONS.get(method, {}), option: value}
    other = tta.attach_method(tta.adapt(build("small_cnn", 7), "rbn"), method, **options)
    before = snapshot(other)
    state = saved.state_dict()
    expected = rf"{method} state saved with other options: {option}={getattr(saved, option)!r} in the state"
    with pytest.raises(ValueError, match=expected):
        other.load_state_dict(state)
    assert_same(snapshot(other), before)
    assert getattr(other, option) == value
