"""What users do to a model around adapt: cast it, build it in inference mode, trace or compile it,
parametrize its BatchNorm weights."""

from __future__ import annotations

import copy
import pathlib

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import tta
from tests.tta.conftest import assert_same_state, build, give_source_statistics, inputs, snapshot

POLICIES = tta.list_policies()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("policy", POLICIES)
def test_detach_after_a_cast_gives_the_original_model_cast(policy: str, dtype: torch.dtype) -> None:
    original = build("small_cnn")
    model = tta.adapt(copy.deepcopy(original), policy)
    with torch.no_grad():
        model(inputs("small_cnn", 4))
    model = tta.detach(model.to(dtype))
    expected = original.to(dtype)
    for (name, a), b in zip(model.state_dict().items(), expected.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    x = inputs("small_cnn", 4, seed=2, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(model(x), expected(x))


@pytest.mark.parametrize("policy", POLICIES)
def test_statistics_keep_their_precision_when_the_model_is_cast(policy: str) -> None:
    model = tta.adapt(build("small_cnn"), policy)
    dtypes = {name: b.dtype for name, b in model.named_buffers()}
    model.half()
    assert {name: b.dtype for name, b in model.named_buffers()} == dtypes
    assert all(p.dtype == torch.float16 for p in model.parameters())
    model.double()
    assert {name: b.dtype for name, b in model.named_buffers()} == dtypes


def test_adabn_pool_of_a_half_model_counts_past_float16_range() -> None:
    """More than 65,504 values per channel: a float16 pool would overflow; the float64 one is exact."""
    model = tta.adapt(give_source_statistics(nn.Sequential(nn.BatchNorm2d(3))), "adabn").half()
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 96, 96, generator=generator) * 30 + 200).half() for _ in range(3)]
    with torch.no_grad():
        for x in batches:
            model(x)
    values = torch.cat(batches).double().transpose(0, 1).reshape(3, -1)  # 110,592 values per channel
    mean, var = model[0].adapted_stats()
    torch.testing.assert_close(mean.double(), values.mean(1), rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), values.var(1, correction=0), rtol=1e-5, atol=0)


@pytest.mark.parametrize("policy", POLICIES)
def test_adapt_inside_inference_mode_leaves_a_model_usable_outside(policy: str) -> None:
    model = build("small_cnn")
    with torch.inference_mode():
        model = tta.adapt(model, policy)
        model(inputs("small_cnn", 4))
    assert not any(b.is_inference() for b in model.buffers())
    x = inputs("small_cnn", 4, seed=2).requires_grad_()
    model(x).sum().backward()
    tta.reset(model)
    with torch.no_grad():
        model(x)


@pytest.mark.parametrize("policy", POLICIES)
def test_jit_trace_is_refused_and_changes_no_state(policy: str) -> None:
    model = tta.adapt(build("small_cnn"), policy)
    state = snapshot(model)
    with pytest.raises(RuntimeError, match=r"torch.jit.trace cannot record an adapted model.*keep_adapted"):
        torch.jit.trace(model, inputs("small_cnn", 4))
    assert_same_state(snapshot(model), state)


def test_a_model_baked_with_keep_adapted_traces_like_the_paused_adapted_model() -> None:
    model = tta.adapt(build("small_cnn"), "rbn")
    with torch.no_grad():
        model(inputs("small_cnn", 8))
        x = inputs("small_cnn", 4, seed=3)
        with tta.paused(model):
            expected = model(x)
    traced = torch.jit.trace(tta.detach(model, keep_adapted=True), x)
    torch.testing.assert_close(traced(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.compile
def test_compile_has_no_graph_break_and_matches_eager(policy: str) -> None:
    torch._dynamo.reset()
    eager = tta.adapt(build("small_cnn"), policy)
    compiled_model = tta.adapt(build("small_cnn"), policy)
    with torch.no_grad():
        explanation = torch._dynamo.explain(copy.deepcopy(compiled_model))(inputs("small_cnn", 4))
        assert explanation.graph_break_count == 0, explanation.break_reasons
        compiled = torch.compile(compiled_model, backend="aot_eager")
        for seed in range(3):
            x = inputs("small_cnn", 4, seed)
            torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-6)
        bad = inputs("small_cnn", 4, seed=9)
        bad[0, 0, 0, 0] = float("nan")
        compiled(bad)  # the NaN guard holds in the compiled graph too
        eager(bad)
    for (name, a), b in zip(compiled_model.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.compile
def test_compile_with_a_dynamic_batch_size_reuses_the_graph_for_another_size(policy: str, channels_last: bool) -> None:
    """A batch dimension marked dynamic stays dynamic (no loop or branch of a policy pins it to the first size),
    in both memory layouts a convolution may hand BatchNorm. Compiled with inductor's decompositions (the
    guards they add, such as ``torch.lerp``'s on a Python weight ``>= 0.5``, without inductor's code
    generation), at sizes 64 and 16, far apart so that a threshold on the batch size falls between them
    (below 16 PyTorch's own convolutions guard on it)."""
    torch._dynamo.reset()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = tta.adapt(build("small_cnn"), policy).to(memory_format=layout)
    compiled = torch.compile(model, backend="aot_eager_decomp_partition", fullgraph=True)
    first, second = (inputs("small_cnn", n, seed=n).contiguous(memory_format=layout) for n in (64, 16))
    torch._dynamo.mark_dynamic(first, 0)
    with torch.no_grad():
        compiled(first)
        with torch.compiler.set_stance("fail_on_recompile"):
            assert torch.isfinite(compiled(second)).all()


class Doubled(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight


@pytest.mark.parametrize("policy", POLICIES)
def test_a_parametrized_weight_is_read_at_every_forward(policy: str) -> None:
    original = build("small_cnn")
    parametrize.register_parametrization(original[1], "weight", Doubled())
    model = tta.adapt(copy.deepcopy(original), policy)

    def parametrized_keys(m: nn.Module) -> set[str]:
        return {key for key in m.state_dict() if "parametrizations" in key}

    assert parametrized_keys(model) == parametrized_keys(original) == {"1.parametrizations.weight.original"}
    underlying = model[1].parametrizations.weight.original
    x = inputs("small_cnn", 4)
    for _ in range(2):  # two backwards, each through its own forward
        model(x).sum().backward()
    assert underlying.grad is not None
    with torch.no_grad():
        underlying.mul_(3)
        bn = tta.detach(copy.deepcopy(model))[1]
        assert torch.equal(bn.weight, 2 * underlying)  # the restored layer still parametrized
        model_now = copy.deepcopy(model)
        with tta.paused(model_now):
            out = model_now[1](model_now[0](x))
        # what the policy would give with the new weight written as a plain Parameter
        plain = build("small_cnn")
        plain[1].weight.copy_(2 * underlying)
        plain = tta.adapt(plain, policy)
        plain.load_state_dict(
            {k: v for k, v in model.state_dict().items() if "parametrizations" not in k}, strict=False
        )
        with tta.paused(plain):
            expected = plain[1](plain[0](x))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.compile
def test_torch_export_adapts_like_eager_and_leaves_the_live_state_alone(policy: str) -> None:
    model = tta.adapt(build("small_cnn"), policy)
    state = snapshot(model)
    exported = torch.export.export(model, (inputs("small_cnn", 4),)).module()
    assert_same_state(snapshot(model), state)
    eager = tta.adapt(build("small_cnn"), policy)
    bad = inputs("small_cnn", 4, seed=9)
    bad[0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        for x in [inputs("small_cnn", 4, 0), bad, inputs("small_cnn", 4, 1)]:
            torch.testing.assert_close(exported(x), eager(x), rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_double_model_keeps_double_statistics(policy: str) -> None:
    """Running statistics that are float64 at attach stay float64: ``source`` is still the original model
    bit for bit, ``detach`` restores them exactly, and the adapted statistics are those of float64 maths."""
    original = build("small_cnn").double()
    with torch.no_grad():
        original[1].running_mean.add_(1e-12)  # a difference float32 cannot hold
    model = tta.adapt(copy.deepcopy(original), policy)
    assert all(b.dtype == torch.float64 for name, b in model.named_buffers() if b.is_floating_point())
    x = inputs("small_cnn", 4).double()
    with torch.no_grad():
        out = model(x)
        assert out.dtype == torch.float64
        if policy == "source":
            assert torch.equal(out, original(x))
        if policy == "tbn":
            features = original[0](x)
            expected = torch.nn.functional.batch_norm(
                features, None, None, original[1].weight, original[1].bias, True, 0.0, original[1].eps
            )
            torch.testing.assert_close(model[1](features), expected, rtol=1e-12, atol=1e-12)
    detached = tta.detach(model)
    for (name, a), b in zip(detached.state_dict().items(), original.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def changes_state(policy: str) -> bool:
    """Whether one forward of a ``small_cnn`` adapted with ``policy`` changes its state."""
    model = tta.adapt(build("small_cnn"), policy)
    state = snapshot(model)
    with torch.no_grad():
        model(inputs("small_cnn", 4))
    return any(not torch.equal(v, model.state_dict()[k]) for k, v in state.items())


STATE_CHANGING = [policy for policy in POLICIES if changes_state(policy)]


@pytest.mark.parametrize("policy", STATE_CHANGING)
@pytest.mark.compile
def test_a_program_exported_from_the_model_adapts_the_live_models_state(policy: str) -> None:
    """torch.export keeps the module's tensors as the program's buffers, without a copy: the state is shared."""
    model = tta.adapt(build("small_cnn"), policy)
    exported = torch.export.export(model, (inputs("small_cnn", 4),)).module()
    state = snapshot(model)
    with torch.no_grad():
        exported(inputs("small_cnn", 4, seed=2))
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("policy", STATE_CHANGING)
@pytest.mark.compile
def test_a_program_exported_from_a_copy_has_its_own_state(policy: str) -> None:
    """The documented way to an independent program: export ``copy.deepcopy(model)``. Calls of either leave
    the other's state as it was, and the program adapts as the model would."""
    model = tta.adapt(build("small_cnn"), policy)
    reference = copy.deepcopy(model)
    exported = torch.export.export(copy.deepcopy(model), (inputs("small_cnn", 4),)).module()
    state, program_state = snapshot(model), snapshot(exported)
    with torch.no_grad():
        out = exported(inputs("small_cnn", 4, seed=2))
        assert_same_state(snapshot(model), state)
        torch.testing.assert_close(out, reference(inputs("small_cnn", 4, seed=2)), rtol=1e-5, atol=1e-6)
        after = snapshot(exported)
        model(inputs("small_cnn", 4, seed=3))
    assert_same_state(snapshot(exported), after)
    assert any(not torch.equal(v, after[k]) for k, v in program_state.items())


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.compile
def test_an_exported_program_saved_and_loaded_adapts_as_the_model(policy: str, tmp_path: pathlib.Path) -> None:
    model = tta.adapt(build("small_cnn"), policy)
    program = torch.export.export(copy.deepcopy(model), (inputs("small_cnn", 4),))
    torch.export.save(program, tmp_path / "program.pt2")
    loaded = torch.export.load(tmp_path / "program.pt2").module()
    state = snapshot(loaded)
    with torch.no_grad():
        for seed in range(3):
            x = inputs("small_cnn", 4, seed)
            torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)
    if policy in STATE_CHANGING:  # the loaded program adapts
        assert any(not torch.equal(v, loaded.state_dict()[k]) for k, v in state.items())
