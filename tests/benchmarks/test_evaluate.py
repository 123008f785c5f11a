"""``tta_bench.evaluate``: a policy alone scored from the forward of LAME over it gives the rows of its own
learner, the grid's units group the two, and a non-finite output row is scored wrong."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tta_bench import evaluate, grid
from tta_bench.models import load_bundled_model


def small_config(setting: str, methods: str, policies: str) -> grid.GridConfig:
    return grid.make_config(
        dataset="fmnist-c",
        policies=policies,
        methods=methods,
        settings=setting,
        orders="dirichlet:0.1",
        corruptions="fog,contrast",
        n_examples=120,
        batch_size=20,
        seeds="0",
    )


@pytest.mark.parametrize("policy", ["tbn", "balanced", "rebalance"])
def test_a_policy_alone_scored_from_lames_forward_has_the_rows_of_its_own_learner(tmp_path, monkeypatch, policy):
    config = small_config("continual", "none,lame", policy)
    run = grid.expand(config)[0]
    source = evaluate.load_source(config)
    model = load_bundled_model()
    built = []
    learner_copy = evaluate.learner_copy

    def counted_learner_copy(*args, **kw):
        built.append(args[1])
        return learner_copy(*args, **kw)

    monkeypatch.setattr(evaluate, "learner_copy", counted_learner_copy)
    shared = evaluate.run_unit(
        config, model, evaluate.Unit(run, (("none", policy), ("lame", policy))), source, cache_dir=tmp_path
    )
    assert built == ["lame"]  # one learner, one forward per batch
    apart = [
        row
        for pair in (("none", policy), ("lame", policy))
        for row in evaluate.run_unit(config, model, evaluate.Unit(run, (pair,)), source, cache_dir=tmp_path)
    ]
    assert sorted(shared, key=grid.row_key) == sorted(apart, key=grid.row_key) and len(shared) == 4
    none = {r["corruption"]: r["errors"] for r in shared if r["method"] == "none"}
    lame = {r["corruption"]: r["errors"] for r in shared if r["method"] == "lame"}
    assert none != lame  # two predictions were scored, not one twice


def test_continual_units_put_each_policy_alone_with_lame_over_it_and_other_methods_alone():
    config = small_config("continual", "none,lame,tent", "source,tbn")
    run = grid.expand(config)[0]
    assert [u.pairs for u in evaluate.units(config, lambda key: False)] == [
        (("none", "source"), ("lame", "source")),
        (("none", "tbn"), ("lame", "tbn")),
        (("tent", "source"),),
        (("tent", "tbn"),),
    ]
    lame_tbn_done = lambda key: key[:2] == ("lame", "tbn")  # noqa: E731  (a resumed grid)
    assert [u.pairs for u in evaluate.units(config, lame_tbn_done)] == [
        (("none", "source"), ("lame", "source")),
        (("none", "tbn"),),
        (("tent", "source"),),
        (("tent", "tbn"),),
    ]
    assert all(u.run == run for u in evaluate.units(config, lame_tbn_done))


def test_a_grid_without_an_output_level_method_runs_each_pair_alone():
    config = small_config("continual", "none,tent", "tbn")
    assert [u.pairs for u in evaluate.units(config, lambda key: False)] == [(("none", "tbn"),), (("tent", "tbn"),)]


def test_an_output_row_with_a_nan_or_an_infinity_is_scored_wrong_whatever_its_argmax():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            # argmax of row 0 (NaN) and row 1 (+inf at class 0) is class 0, the label: both are still wrong
            return torch.tensor([[float("nan"), 0.0], [float("inf"), 0.0], [2.0, 1.0], [0.0, 1.0]])

    batch = SimpleNamespace(x=torch.zeros(4, 1, 2, 2), y=torch.tensor([0, 0, 0, 0]), domain=[("fog", 5)] * 4)
    tallies = evaluate.evaluate_batches({"m": Fixed()}, [batch])
    assert (tallies["m"][("fog", 5)].n, tallies["m"][("fog", 5)].errors) == (4, 3)
