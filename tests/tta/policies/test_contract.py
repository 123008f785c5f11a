"""What every policy guarantees (docs/reference/notation.md),
run for every registered policy (the ``policy`` parameter comes
from the registry when the tests are collected: ``tests/tta/policies/conftest.py``): reset, state_dict,
batch sizes and dtypes, detach, modes, pausing, bad batches, and autograd through any number of forwards."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tta
from tests.tta.conftest import assert_same_state, build, give_source_statistics, inputs, run, snapshot, with_classifier


def gradients(model: nn.Module, *xs: torch.Tensor) -> list[torch.Tensor]:
    return [x.grad for x in xs] + [p.grad for p in model.parameters()]


def test_reset_restores_the_post_attach_state_bit_for_bit(policy: str, model_name: str) -> None:
    model = tta.adapt(build(model_name), policy)
    attached = snapshot(model)
    first = run(model, model_name, range(3))
    tta.reset(model)
    assert_same_state(snapshot(model), attached)
    again = run(model, model_name, range(3))
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_state_dict_round_trip_reproduces_outputs(policy: str, model_name: str) -> None:
    model = tta.adapt(build(model_name), policy)
    run(model, model_name, range(3))
    restored = tta.adapt(build(model_name, seed=7), policy)  # other source stats, overwritten by the load
    restored.load_state_dict(model.state_dict())
    for a, b in zip(run(model, model_name, range(3, 6)), run(restored, model_name, range(3, 6))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 5])
def test_every_batch_size_and_dtype_gives_finite_output_of_the_input_dtype(
    policy: str, model_name: str, batch: int, dtype: torch.dtype
) -> None:
    model = build(model_name)
    if dtype != torch.float32:
        model = model.to(dtype)
    reference = copy.deepcopy(model)
    tta.adapt(model, policy)
    with torch.no_grad():
        for seed in range(2):
            x = inputs(model_name, batch, seed, dtype)
            out = model(x)
            assert out.dtype == dtype and out.shape == (batch, 10)
            assert torch.isfinite(out).all()
            if policy == "source":
                assert torch.equal(out, reference(x))


def test_source_statistics_under_bfloat16_autocast(policy: str) -> None:
    model = build("resnet18")
    reference = copy.deepcopy(model)
    tta.adapt(model, policy)
    x = inputs("resnet18", 4, 0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        if policy == "source":
            assert torch.equal(out, reference(x))
    for _, layer in tta.policy_layers(model):
        stats = layer.adapted_stats()
        if stats is not None:
            assert stats[0].dtype == torch.float32  # statistics kept in float32 (docs/reference/notation.md)


def test_constant_channel_gives_no_nan(policy: str) -> None:
    model = tta.adapt(build("small_cnn"), policy)
    x = inputs("small_cnn", 4, 0)
    x[:, 1] = 3.0
    first_layer = model[1]
    with torch.no_grad():
        hidden = model[0](x)
        hidden[:, 2] = -1.5  # a constant channel at the BatchNorm's input
        for _ in range(3):
            out = first_layer(hidden)
            assert torch.isfinite(out).all()
        assert torch.isfinite(model(x)).all()


def test_detach_restores_the_original_layers(policy: str, model_name: str) -> None:
    model = build(model_name)
    originals = {name: m for name, m in model.named_modules()}
    before = snapshot(model)
    x = inputs(model_name, 3, 9)
    with torch.no_grad():
        expected = model(x)
    tta.adapt(model, policy)
    run(model, model_name, range(2))
    model = tta.detach(model)
    assert {name: m for name, m in model.named_modules()} == originals  # the very same objects
    assert_same_state(snapshot(model), before)
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_train_mode_changes_nothing(policy: str) -> None:
    evaluated = tta.adapt(build("small_cnn"), policy)
    trained = tta.adapt(build("small_cnn"), policy).train()
    for a, b in zip(run(evaluated, "small_cnn", range(3)), run(trained, "small_cnn", range(3))):
        assert torch.equal(a, b)


def test_paused_updates_nothing_and_uses_the_current_state(policy: str) -> None:
    model = tta.adapt(build("small_cnn"), policy)
    run(model, "small_cnn", range(2))
    state = snapshot(model)
    with tta.paused(model):
        paused_out = run(model, "small_cnn", range(5, 7))
        again = run(model, "small_cnn", range(5, 7))
    assert_same_state(snapshot(model), state)
    for a, b in zip(paused_out, again):
        assert torch.equal(a, b)
    assert all(not layer.paused for _, layer in tta.policy_layers(model))


def test_affine_parameters_are_shared_and_keep_their_gradients(policy: str) -> None:
    model = build("small_cnn")
    weight = model[1].weight
    tta.adapt(model, policy)
    assert model[1].weight is weight
    x = inputs("small_cnn", 4, 0).requires_grad_()
    model(x).square().sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()
    for _, layer in tta.policy_layers(model):
        for buffer in layer.buffers():
            assert not buffer.requires_grad


def test_forward_off_the_cpu_never_reads_a_value_on_the_host(policy: str) -> None:
    """On an accelerator a value read in Python (``.item()``, ``bool()``, ``int()``) is a host sync that
    stalls the device. The ``meta`` device has no values: such a read raises there, so every adapting,
    paused and n = 1 forward running through on it shows the accelerator path syncs nowhere."""
    model = tta.adapt(build("small_cnn"), policy).to("meta")
    with torch.no_grad():
        for batch in (4, 4, 1):
            out = model(inputs("small_cnn", batch).to("meta"))
        with tta.paused(model):
            model(inputs("small_cnn", 4).to("meta"))
    assert out.device.type == "meta" and out.shape == (1, 10)
    with pytest.raises(RuntimeError):
        bool(out.sum() > 0)  # what the test relies on


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_batch_propagates_but_leaves_the_state_untouched(policy: str, bad_value: float) -> None:
    clean = [inputs("small_cnn", 4, seed) for seed in range(3)]
    bad = clean[0].clone()
    bad[1, 0, 2, 2] = bad_value
    reference = tta.adapt(build("small_cnn"), policy)
    model = tta.adapt(build("small_cnn"), policy)
    with torch.no_grad():
        reference(clean[0])
        model(clean[0])
        state = snapshot(model)
        out = model(bad)
        assert not torch.isfinite(out[1]).all()  # documented propagation
        assert_same_state(snapshot(model), state)
        for x in clean[1:]:
            assert torch.equal(model(x), reference(x))


def test_empty_batch_is_refused_and_changes_nothing(policy: str) -> None:
    model = tta.adapt(build("small_cnn"), policy)
    state = snapshot(model)
    with pytest.raises(ValueError, match="empty batch"):
        model[1](torch.zeros(0, 8, 4, 4))
    with pytest.raises(ValueError, match="empty batch"):
        model[1](torch.zeros(2, 8, 0, 4))
    assert_same_state(snapshot(model), state)


def test_two_forwards_in_one_loss_give_the_sum_of_their_separate_gradients(policy: str, model_name: str) -> None:
    """One backward through two adapting forwards equals two backwards, each right after its forward:
    each forward's gradient uses the statistics that forward normalized with, whatever came after."""
    batches = [inputs(model_name, 4, seed).requires_grad_() for seed in (0, 1)]
    together = tta.adapt(build(model_name), policy)
    sum(together(x).square().sum() for x in batches).backward()

    separate = tta.adapt(build(model_name), policy)
    expected_inputs = [x.detach().clone().requires_grad_() for x in batches]
    for x in expected_inputs:
        separate(x).square().sum().backward()

    for got, expected in zip(gradients(together, *batches), gradients(separate, *expected_inputs)):
        assert got is not None and expected is not None
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(together.state_dict().items(), separate.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_a_layer_reached_twice_in_one_forward_backpropagates(policy: str) -> None:
    bn = nn.BatchNorm2d(4)
    model = give_source_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), bn, nn.ReLU(), bn))
    model = tta.adapt(with_classifier(model, policy, 4 * 6 * 6), policy)
    x = torch.randn(6, 3, 8, 8, requires_grad=True)
    loss = model(x).sum() + model(x).sum()
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # a second loss from the already updated state, and its backward, still work
    model(x).sum().backward()


def test_two_forwards_of_one_model_in_one_loss_backpropagate(policy: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4).eval())
    model = tta.adapt(with_classifier(model, policy, 4 * 6 * 6), policy)
    x = torch.randn(8, 3, 8, 8, requires_grad=True)
    (model(x).sum() + model(x).sum()).backward()
