"""The benchmark grid: argument validation, canonical configs, and the rows a grid produces."""

from __future__ import annotations

import os

import pytest

import tta
import tta_streams
from tta_bench import grid


def small(**overrides):
    args = dict(
        dataset="fmnist-c",
        policies="source,tbn",
        orders="iid,dirichlet:0.1",
        corruptions="brightness,contrast",
        seeds="0,1",
    )
    args.update(overrides)
    return grid.make_config(**args)


def test_all_policies_is_the_shared_registry():
    assert grid.parse_policies("all") == tuple(tta.list_policies())
    assert small(policies="all").policies == tuple(tta.list_policies())


def test_all_corruptions_are_the_fifteen_in_standard_order():
    assert grid.parse_corruptions("all") == tuple(tta_streams.CORRUPTIONS)
    assert len(grid.parse_corruptions("all")) == 15
    assert grid.parse_corruptions("none") == ("none",)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("policies", "source,bogus_policy", "bogus_policy"),
        ("corruptions", "brightness,fogg", "fogg"),
        ("dataset", "mnist-c", "mnist-c"),
        ("orders", "iid,shuffled", "shuffled"),
        ("orders", "dirichlet:abc", "abc"),
        ("settings", "episodic", "episodic"),
        ("severities", "6", "6"),
        ("seeds", "x", "x"),
    ],
)
def test_unknown_names_are_refused_with_the_name_in_the_message(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        small(**{field: value})


def test_duplicates_and_clean_mixed_with_corruptions_are_refused():
    with pytest.raises(ValueError, match="twice"):
        small(policies="tbn,tbn")
    with pytest.raises(ValueError, match="none"):
        small(corruptions="none,fog")


def test_options_values_are_python_literals_grouped_by_policy():
    config = small(
        policies="alpha_bn,unmix_tns",
        options=["alpha_bn.alpha=0.2", "unmix_tns.num_components=4", "unmix_tns.temperature=1e-1"],
    )
    assert config.options == {"alpha_bn": {"alpha": 0.2}, "unmix_tns": {"num_components": 4, "temperature": 0.1}}
    assert isinstance(config.options["unmix_tns"]["num_components"], int)


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        ("alpha_bn.alpah=0.2", "alpah"),  # not an option of the policy
        ("rbn.alpha=0.2", "not among"),  # policy not in the grid
        ("alpha_bn=0.2", "policy.key=value"),  # malformed
        ("nope.alpha=1", "nope"),  # unknown policy
    ],
)
def test_bad_options_are_refused(option, needle):
    with pytest.raises(ValueError, match=needle):
        small(policies="alpha_bn", options=[option])


def test_equal_arguments_spelled_differently_give_equal_configs():
    explicit = small(policies=",".join(tta.list_policies()), orders="iid, dirichlet:0.10")
    assert explicit == small(policies="all", orders="iid,dirichlet:0.1")
    assert explicit.to_json() == grid.GridConfig.from_json(explicit.to_json()).to_json()


def test_a_model_path_is_made_absolute_and_named_models_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert small(model="ckpt.pt").model == os.path.join(str(tmp_path), "ckpt.pt")
    assert small(model="robustbench:Standard").model == "robustbench:Standard"
    assert small(model="bundled").model == "bundled"
    assert small(model="torchvision.models:resnet50").model == "torchvision.models:resnet50"


def test_row_keys_are_the_full_product_without_repeats():
    config = small()
    keys = grid.row_keys(config)
    # 2 policies x 1 setting x 2 orders x 2 seeds x 2 corruptions x 1 severity
    assert len(keys) == 2 * 2 * 2 * 2 == 16 and len(set(keys)) == 16
    assert {k[0] for k in keys} == {"none"}
    assert {k[1] for k in keys} == {"source", "tbn"}
    assert {(k[5], k[6]) for k in keys} == {("brightness", 5), ("contrast", 5)}
    runs = grid.expand(config)
    assert [(r.order, r.seed) for r in runs] == [("iid", 0), ("iid", 1), ("dirichlet:0.1", 0), ("dirichlet:0.1", 1)]


def test_gradual_reports_every_severity_once_and_clean_is_one_domain():
    config = small(settings="single,gradual", severities="3")
    assert grid.domains(config, "single") == [("brightness", 3), ("contrast", 3)]
    assert grid.domains(config, "gradual") == [(c, s) for c in ("brightness", "contrast") for s in range(1, 6)]
    clean = small(corruptions="none")
    assert grid.domains(clean, "single") == [("none", 0)]
    with pytest.raises(ValueError, match="single"):
        small(corruptions="none", settings="continual")


def test_option_values_nan_and_inf_are_floats_and_other_words_stay_strings():
    value = grid.parse_option("unmix_tns.temperature=nan")[2]
    assert isinstance(value, float) and value != value
    assert grid.parse_option("rbn.alpha=-inf")[2] == float("-inf")
    assert grid.parse_option("rbn.alpha=None")[2] is None
    assert grid.parse_option("rbn.alpha=abc")[2] == "abc"


def test_model_args_are_literal_keyword_arguments():
    assert grid.parse_model_args(["num_classes=10", "name='x'", "variant=small"]) == {
        "num_classes": 10,
        "name": "x",
        "variant": "small",
    }
    with pytest.raises(ValueError, match="key=value"):
        grid.parse_model_args(["10"])
    with pytest.raises(ValueError, match="twice"):
        grid.parse_model_args(["a=1", "a=2"])


def test_arch_model_args_and_table_are_part_of_the_identity_only_when_set():
    plain = small().to_json()
    assert not {"arch", "model_args", "table"} & set(plain)  # folders written before them still resume
    full = small(arch="bundled", model_args=["num_classes=10"], table="imagenet")
    assert full.to_json() == {**plain, "arch": "bundled", "model_args": {"num_classes": 10}, "table": "imagenet"}
    assert grid.GridConfig.from_json(full.to_json()) == full
    with pytest.raises(ValueError, match="'svhn'"):
        small(table="svhn")


# --- methods: a grid axis over the policies ---------------------------------------------------------------


def test_methods_are_an_axis_of_the_row_keys_outside_the_policies():
    config = small(methods="none,tent", orders="iid", seeds="0")
    keys = grid.row_keys(config)
    # 2 methods x 2 policies x 2 corruptions
    assert len(keys) == len(set(keys)) == 8
    assert keys[:4] == [
        ("none", "source", "single", "iid", 0, "brightness", 5),
        ("none", "tbn", "single", "iid", 0, "brightness", 5),
        ("tent", "source", "single", "iid", 0, "brightness", 5),
        ("tent", "tbn", "single", "iid", 0, "brightness", 5),
    ]
    assert small(methods="all").methods == tuple(tta.list_methods())


def test_methods_are_part_of_the_identity_only_when_not_just_none():
    plain = small()
    assert plain.methods == ("none",) and "methods" not in plain.to_json()  # old folders still resume
    assert small(methods="none").to_json() == plain.to_json()
    both = small(methods="none,tent")
    assert both.to_json() == {**plain.to_json(), "methods": ["none", "tent"]}
    assert grid.GridConfig.from_json(both.to_json()) == both
    assert grid.GridConfig.from_json(plain.to_json()).methods == ("none",)


def test_a_row_without_method_is_the_none_methods_row():
    row = {"policy": "tbn", "setting": "single", "order": "iid", "seed": 0, "corruption": "fog", "severity": 5}
    assert grid.row_key(row) == ("none", "tbn", "single", "iid", 0, "fog", 5)
    assert grid.row_key({**row, "method": "tent"})[0] == "tent"


def test_dua_is_a_method_of_the_grid_and_momentum_decay_augment_names_it():
    config = small(methods="none,dua", policies="momentum_decay", options=["dua.copies=4", "dua.seed=2"])
    assert config.methods == ("none", "dua") and config.options == {"dua": {"copies": 4, "seed": 2}}
    with pytest.raises(
        ValueError,
        match=r"'momentum_decay.augment=8': momentum_decay no longer takes augment=8; "
        r"DUA is a method: .* --methods dua --option dua.copies=N",
    ):
        small(policies="momentum_decay", options=["momentum_decay.augment=8"])


def test_method_options_share_the_policies_namespace():
    config = small(
        methods="none,tent", options=["tent.lr=1e-4", "tent.steps=2", "alpha_bn.alpha=0.2"], policies="tbn,alpha_bn"
    )
    assert config.options == {"tent": {"lr": 1e-4, "steps": 2}, "alpha_bn": {"alpha": 0.2}}


@pytest.mark.parametrize(
    ("methods", "option", "needle"),
    [
        ("none", "tent.lr=1e-4", "not among --methods"),  # method not in the grid
        ("none,tent", "tent.lrr=1e-4", "has no option 'lrr'"),  # not an option of the method
        ("none,tent", "nope.lr=1", "unknown policy or method 'nope'"),
        ("none,warp", "tent.lr=1", "unknown method 'warp'"),
        ("tent,tent", "tent.lr=1", "twice"),
    ],
)
def test_bad_methods_and_method_options_are_refused(methods, option, needle):
    with pytest.raises(ValueError, match=needle):
        small(methods=methods, options=[option])


def test_a_dataset_registered_by_its_own_module_is_valid_in_the_grid(toy_dataset):
    assert small(dataset="toy").dataset == toy_dataset
    assert small(dataset="FMNIST").dataset == "fmnist-c"


def test_imbalanced_orders_and_unitta_settings_are_keyed_by_their_canonical_spelling():
    config = small(orders="imbalanced:100.0, imbalanced:10:random+slots:0.10, imbalanced:5+iid")
    assert config.orders == ("imbalanced:100", "imbalanced:10:random+slots:0.1", "imbalanced:5")
    markov = small(orders="iid", settings="unitta:0.95:10:0.85:5,unitta:0.9:10:i:1")
    assert markov.settings == ("unitta:nunu", "unitta:0.9:10:i:1")
    for cfg in (config, markov):
        assert grid.GridConfig.from_json(cfg.to_json()) == cfg
    assert {key[2] for key in grid.row_keys(markov)} == {"unitta:nunu", "unitta:0.9:10:i:1"}
    # the Markov chain visits every domain of the grid: one row per domain, as in the other settings
    assert grid.domains(markov, "unitta:nunu") == [("brightness", 5), ("contrast", 5)]
    with pytest.raises(ValueError, match="twice"):
        small(orders="iid", settings="unitta:nunu,unitta:0.95:10:0.85:5")


@pytest.mark.parametrize(
    ("settings", "orders", "needle"),
    [
        ("unitta:nu1u", "iid,dirichlet:0.1", "takes no label order"),
        ("unitta:nuxu", "iid", "'x' is no domain correlation letter"),
        ("unitta:0.95:0.5:0.85:5", "iid", "class imbalance factor must be a finite number >= 1"),
        ("unitta:1:1:1:1", "iid", "impossible"),
        ("single", "imbalanced:0.5", "imbalance factor must be a finite number >= 1"),
        ("single", "dirichlet:0.1+imbalanced:10", "written first"),
    ],
)
def test_bad_imbalanced_orders_and_unitta_settings_are_refused_before_anything_runs(settings, orders, needle):
    with pytest.raises(ValueError, match=needle):
        small(settings=settings, orders=orders)


@pytest.mark.parametrize(("setting", "order"), [("continual", "imbalanced:10+slots:0.1"), ("unitta:nunu", "iid")])
def test_tta_bench_runs_a_grid_of_the_new_orders_and_settings(tmp_path, setting, order):
    import json

    from tta_bench import cli

    argv = ["run", "--dataset", "fmnist-c", "--policies", "source", "--setting", setting, "--order", order,
            "--corruptions", "brightness,contrast", "--n-examples", "300", "--batch-size", "50", "--seeds", "0",
            "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]  # fmt: skip
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert {(row["setting"], row["order"]) for row in rows} == {(setting, order)}
    assert sorted(row["corruption"] for row in rows) == ["brightness", "contrast"]
    stream = tta_streams.Stream("fmnist", corruptions=["brightness", "contrast"], setting=setting, order=order,
                                n_examples=300, batch_size=50, seed=0, cache_dir=tmp_path / "cache")  # fmt: skip
    assert sum(row["n"] for row in rows) == sum(len(batch.y) for batch in stream)
