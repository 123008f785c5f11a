"""adapt / reset / detach / paused / policy_layers: the attach contract and its errors (docs/reference/notation.md)."""

from __future__ import annotations

import pkgutil
import re
from pathlib import Path

import pytest
import timm.layers
import torch
import torch.nn.functional as F
from torch import nn

import tta
from tests.tta.conftest import build, give_source_statistics, inputs


def docs_order() -> list[str]:
    """The policies in the order of the docs' policy index (its toctree)."""
    index = (Path(__file__).resolve().parents[2] / "docs" / "policies" / "index.md").read_text()
    toctree = re.search(r"```\{toctree\}\n(.*?)```", index, flags=re.S).group(1)
    return [line.strip() for line in toctree.splitlines() if line.strip() and not line.startswith(":")]


def test_policies_are_one_module_each_registered_in_the_order_of_the_docs() -> None:
    names = tta.list_policies()
    packaged = [name for name in names if tta.get_policy(name).__module__.startswith("tta.policies.")]
    assert [tta.get_policy(name).__module__ for name in packaged] == [f"tta.policies.{name}" for name in packaged]
    modules = {module.name for module in pkgutil.iter_modules(tta.policies.__path__)}
    assert set(packaged) == modules - {"base", "running"}
    assert names == docs_order()


def test_options_and_defaults_are_those_of_the_spec() -> None:
    assert tta.policy_options("alpha_bn") == {"alpha": 0.1}
    assert tta.policy_options("rbn") == {"alpha": 0.05}
    assert tta.policy_options("momentum_decay") == {
        "momentum": 0.1,
        "decay": 0.94,
        "min_momentum": 0.005,
    }
    assert tta.policy_options("unmix_tns") == {
        "num_components": 16,
        "temperature": 0.07,
        "init_spread": 0.5,
        "batch_size_max": 64,
        "seed": 0,
    }
    assert tta.policy_options("adab2n") == {"momentum": None, "kappa": 0.4}
    assert tta.policy_options("balanced") == {"num_classes": None, "eta": None, "gamma": None}
    assert tta.policy_options("iabn") == {"k": 4.0, "stats": "running", "momentum": 0.01}
    assert all(tta.policy_options(p) == {} for p in ["source", "tbn", "adabn"])


def test_every_batchnorm_is_replaced_and_listed() -> None:
    model = build("resnet18")
    count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    tta.adapt(model, "rbn")
    layers = tta.policy_layers(model)
    assert len(layers) == count == 20
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert layers[0][0] == "bn1" and all(type(layer).policy_name == "rbn" for _, layer in layers)


def test_unknown_policy_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown policy 'tent'.*source, tbn, adabn"):
        tta.adapt(build("small_cnn"), "tent")


def test_unknown_option_names_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"no option 'momentum'.*alpha=0.05"):
        tta.adapt(build("small_cnn"), "rbn", momentum=0.1)
    with pytest.raises(ValueError, match="takes: none"):
        tta.adapt(build("small_cnn"), "tbn", alpha=0.1)


def test_out_of_range_options_are_refused() -> None:
    with pytest.raises(ValueError, match=r"option .alpha. must lie in \[0, 1\]"):
        tta.adapt(build("small_cnn"), "alpha_bn", alpha=1.5)
    with pytest.raises(ValueError, match="num_components"):
        tta.adapt(build("small_cnn"), "unmix_tns", num_components=0)


def test_model_without_batchnorm_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.LayerNorm(4), nn.InstanceNorm2d(4))
    with pytest.raises(ValueError, match="has no BatchNorm layer"):
        tta.adapt(model, "tbn")


def test_adapting_twice_is_refused_and_plain_models_are_not_reset() -> None:
    model = tta.adapt(build("small_cnn"), "tbn")
    with pytest.raises(ValueError, match="already adapted"):
        tta.adapt(model, "rbn")
    for call in (tta.reset, tta.detach):
        with pytest.raises(ValueError, match="not adapted"):
            call(build("small_cnn"))
    with pytest.raises(ValueError, match="not adapted"):
        with tta.paused(build("small_cnn")):
            pass


def test_a_model_that_is_a_batchnorm_layer_returns_its_replacement() -> None:
    bn = give_source_statistics(nn.BatchNorm2d(3))
    layer = tta.adapt(bn, "rbn")
    assert isinstance(layer, tta.NormPolicy) and layer.original is bn
    assert tta.detach(layer) is bn


def test_a_shared_layer_stays_shared() -> None:
    shared = nn.BatchNorm1d(4)
    model = give_source_statistics(nn.Sequential(nn.Linear(4, 4), shared, nn.Linear(4, 4), shared))
    tta.adapt(model, "adabn")
    assert model[1] is model[3]
    assert len(tta.policy_layers(model)) == 1
    assert tta.detach(model)[1] is shared


def test_batchnorm_without_running_statistics_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        tta.adapt(model, "tbn")


def test_timm_batchnorm_act_keeps_its_activation() -> None:
    layer = give_source_statistics(timm.layers.BatchNormAct2d(6, act_layer=nn.ReLU))
    model = nn.Sequential(nn.Conv2d(3, 6, 3), layer)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        tta.adapt(model, "source")
        assert torch.equal(model(x), expected)
        assert (expected == 0).any()  # the ReLU did something
        tta.detach(model)
        tta.adapt(model, "tbn")
        hidden = model[0](x)
        bn = model[1].original
        expected_tbn = F.relu(F.batch_norm(hidden, None, None, bn.weight, bn.bias, True, 0.0, bn.eps))
        torch.testing.assert_close(model(x), expected_tbn)
    assert type(tta.detach(model)[1]) is timm.layers.BatchNormAct2d


def test_subclass_with_unknown_forward_is_refused_and_plain_subclass_accepted() -> None:
    class ScaledBatchNorm(nn.BatchNorm2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    class TaggedBatchNorm(nn.BatchNorm2d):
        pass

    with pytest.raises(TypeError, match="ScaledBatchNorm overrides BatchNorm's forward"):
        tta.adapt(nn.Sequential(ScaledBatchNorm(3)), "tbn")
    model = tta.adapt(nn.Sequential(TaggedBatchNorm(3)), "tbn")
    assert isinstance(model[0], tta.NormPolicy)


def test_sync_batchnorm_is_adapted() -> None:
    model = give_source_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4)))
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        hidden = model[0](x)
        bn = model[1]
        expected = F.batch_norm(hidden, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        tta.adapt(model, "tbn")
        torch.testing.assert_close(model(x), expected)


def test_paused_restores_flags_after_an_exception() -> None:
    model = tta.adapt(build("small_cnn"), "rbn")
    with pytest.raises(RuntimeError):
        with tta.paused(model):
            raise RuntimeError("boom")
    assert all(not layer.paused for _, layer in tta.policy_layers(model))


def test_adapted_stats_start_at_the_source_statistics() -> None:
    model = tta.adapt(build("small_cnn"), "momentum_decay")
    for _, layer in tta.policy_layers(model):
        mean, var = layer.adapted_stats()
        assert torch.equal(mean, layer.source_mean) and torch.equal(var, layer.source_var)
    with torch.no_grad():
        model(inputs("small_cnn", 8, 0))
    assert not torch.equal(
        tta.policy_layers(model)[0][1].adapted_stats()[0], tta.policy_layers(model)[0][1].source_mean
    )


@pytest.mark.parametrize(
    "policy", [p for p in tta.list_policies() if tta.get_policy(p).stateful and not tta.get_policy(p).uses_predictions]
)
def test_detach_keep_adapted_bakes_the_current_statistics_into_plain_batchnorms(policy: str) -> None:
    model = tta.adapt(build("small_cnn"), policy)
    with torch.no_grad():
        for seed in range(3):
            model(inputs("small_cnn", 8, seed))
    held = {name: tuple(t.clone() for t in layer.adapted_stats()) for name, layer in tta.policy_layers(model)}
    x = inputs("small_cnn", 4, seed=5)
    baked = tta.detach(model, keep_adapted=True).eval()
    assert not tta.policy_layers(baked)
    for name, (mean, var) in held.items():
        bn = baked.get_submodule(name)
        assert type(bn) is nn.BatchNorm2d
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    # a plain BatchNorm model normalizing with exactly those statistics (hand-built reference)
    reference = build("small_cnn")
    with torch.no_grad():
        for name, (mean, var) in held.items():
            reference.get_submodule(name).running_mean.copy_(mean)
            reference.get_submodule(name).running_var.copy_(var)
        assert torch.equal(baked(x), reference(x))


@pytest.mark.parametrize("policy", [p for p in tta.list_policies() if not tta.get_policy(p).stateful])
def test_detach_keep_adapted_refuses_stateless_policies_and_changes_nothing(policy: str) -> None:
    model = tta.adapt(build("small_cnn"), policy)
    with pytest.raises(ValueError, match=f"policy {policy} keeps no statistics"):
        tta.detach(model, keep_adapted=True)
    assert len(tta.policy_layers(model)) == 2


def test_iabn_from_source_statistics_keeps_no_state() -> None:
    """``stats="source"``: stateless, so nothing to reset or keep, and nothing a batch changes."""
    model = tta.adapt(build("small_cnn"), "iabn", stats="source")
    layer = model[1]
    assert {name for name, _ in layer.named_buffers()} == {"source_mean", "source_var"}
    with torch.no_grad():
        first = model(inputs("small_cnn", 4, 0))
        model(inputs("small_cnn", 8, 1))
        assert torch.equal(model(inputs("small_cnn", 4, 0)), first)
    with pytest.raises(ValueError, match="policy iabn keeps no statistics"):
        tta.detach(model, keep_adapted=True)


def test_adabn_skips_batches_with_one_value_per_channel() -> None:
    """As every stateful policy (README): B = 1 on (B, C) features has no variance to pool."""
    model = tta.adapt(build("mlp_bn1d"), "adabn")
    source = tta.adapt(build("mlp_bn1d"), "source")
    with torch.no_grad():
        for seed in range(3):
            x = inputs("mlp_bn1d", 1, seed)
            assert torch.equal(model(x), source(x))
    assert int(tta.policy_layers(model)[0][1].count) == 0
    with torch.no_grad():
        model(inputs("mlp_bn1d", 2))
    assert int(tta.policy_layers(model)[0][1].count) == 2


@pytest.mark.parametrize("policy", [p for p in tta.list_policies() if tta.get_policy(p).uses_predictions])
def test_a_number_of_classes_the_model_does_not_output_is_named_before_any_state_changes(policy: str) -> None:
    model = tta.adapt(build("small_cnn"), policy, num_classes=5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=rf"{policy} learns from the model's predicted classes and needs \(batch, 5\) "
        r"logits from the model; it returned \(4, 10\)",
    ):
        with torch.no_grad():
            model(inputs("small_cnn", 4))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("policy", tta.list_policies())
def test_a_layer_that_fails_to_build_leaves_the_model_untouched_and_adaptable(
    policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An allocation failure at the third of resnet18's BatchNorm layers: no layer swapped, no hook left."""
    model = build("resnet18")
    modules = list(model.named_modules())
    layer_class = tta.get_policy(policy)
    built = []
    original_init = layer_class.__init__

    def failing_init(self: nn.Module, *args: object, **kwargs: object) -> None:
        built.append(1)
        if len(built) == 3:
            raise MemoryError("out of memory")
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(layer_class, "__init__", failing_init)
    with pytest.raises(MemoryError):
        tta.adapt(model, policy)
    monkeypatch.undo()
    assert list(model.named_modules()) == modules
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    batchnorms = [m for _, m in modules if isinstance(m, nn.BatchNorm2d)]
    assert [layer.original for _, layer in tta.policy_layers(tta.adapt(model, policy))] == batchnorms
