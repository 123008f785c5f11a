"""Option checking from each option's declared type and range (docs/policies/index.md), before anything is swapped."""

from __future__ import annotations

import re
from typing import Annotated

import numpy as np
import pytest
from torch import nn

import tta
from tests.tta.conftest import build
from tta.options import Choice, Range, declared_options, validate_options

# (policy, option, values refused for their type, values refused for their range, values accepted):
# the ranges of docs/policies/index.md written out by hand.
CASES = [
    ("alpha_bn", "alpha", ["0.1", None, True], [-0.1, 1.5, float("nan"), float("inf")], [0, 1, 0.5, np.float32(0.25)]),
    ("rbn", "alpha", ["0.1", [0.1]], [-1e-9, 1.0001, float("-inf")], [0.0, 1.0, np.float64(0.05)]),
    ("momentum_decay", "momentum", ["x"], [-0.1, 1.1, float("nan")], [0.0, 0.5]),
    ("momentum_decay", "decay", [None], [0.0, -0.5, 1.01, float("nan")], [1e-6, 1, 0.94]),
    ("momentum_decay", "min_momentum", [False], [-0.001, 1.5], [0.0, 0.005]),
    ("unmix_tns", "num_components", [2.5, 16.0, "16"], [0, -3], [1, 2, np.int32(4)]),
    ("unmix_tns", "temperature", ["0.07"], [0.0, -1.0, float("nan"), float("inf")], [1e-3, 1, 0.07]),
    ("unmix_tns", "init_spread", [None], [1.0, -0.1, float("nan")], [0.0, 0.99]),
    ("unmix_tns", "batch_size_max", [64.0], [0], [1, 128]),
    ("unmix_tns", "seed", [1.5, "0", None, True], [-1], [0, 7, np.int64(3)]),
    ("adab2n", "momentum", ["0.1", True, [0.1]], [-0.1, 1.5, float("nan")], [0.0, 1.0, 0.3, np.float32(0.5)]),
    ("adab2n", "kappa", [None, "1"], [-0.1, 1.01, float("inf")], [0, 0.4, 1]),
    ("balanced", "num_classes", [10.0, "10", True], [1, 0, -2], [2, 10, np.int64(5)]),
    ("balanced", "eta", ["0.01", True], [0.0, -0.01, 1.5, float("nan")], [1e-4, 0.01, 1]),
    ("balanced", "gamma", ["0", [0.1]], [-0.1, 1.01, float("inf")], [0.0, 0.1, 1]),
    ("iabn", "k", [None, "4"], [-1.0, float("nan"), float("inf")], [0, 4, 1e6]),
    ("iabn", "stats", [None, 1, True, ["source"]], ["Source", "batch", ""], ["source", "running"]),
    ("iabn", "momentum", [None, "0.01"], [-0.01, 1.5], [0.0, 0.01, 1]),
    ("rebalance", "num_classes", [10.0, "10", True], [1, 0, -2], [2, 10, np.int64(5)]),
    ("rebalance", "momentum", ["0.1", True], [0.0, -0.1, 1.5, float("nan")], [1e-3, 0.1, 1]),
    ("rebalance", "class_memory", ["1000", None], [0.5, 0.0, float("inf")], [1, 1000.0]),
    ("rebalance", "prior", [None, 1], ["Uniform", "source"], ["previous", "uniform"]),
    ("rebalance", "pool_momentum", ["0.01", True], [0.0, -0.1, 1.5, float("nan")], [1e-3, 0.01, 1]),
    ("rebalance", "detect_changes", [], [], [True, False]),  # a bool: its type errors in test_rebalance
    ("rebalance", "change_threshold", ["0.25", None], [0.0, -1.0, float("inf")], [1e-3, 0.25, 4]),
    ("rebalance", "change_window", ["128", None], [0.5, 0.0, float("inf")], [1, 128.0]),
    ("rebalance", "reference_batch", ["64", 64.0, True], [0, -1], [1, 64]),
    ("bdn", "num_classes", [10.0, "10", True], [1, 0, -2], [2, 10, np.int64(5)]),
    ("bdn", "eta", ["0.01", True], [0.0, -0.01, 1.5, float("nan")], [1e-4, 0.01, 1]),
    ("bdn", "gamma", ["0", [0.1], None], [-0.1, 1.01, float("inf")], [0.0, 0.1, 1]),
    ("bdn", "max_domains", [64.0, "64", None], [1, 0, -2], [2, 64, np.int64(8)]),
    ("bdn", "prune", [], [], [True, False]),  # a bool
    ("bdn", "domain_layer", [1.0, "0", True], [-1], [0, 1]),  # small_cnn has 2 BatchNorm layers
    ("bdn", "confidence_filter", [], [], [True, False]),  # a bool
]


@pytest.mark.parametrize("policy, option, wrong_type, out_of_range, accepted", CASES)
def test_each_option_is_checked_for_type_and_range(
    policy: str, option: str, wrong_type: list[object], out_of_range: list[object], accepted: list[object]
) -> None:
    for value in wrong_type:
        model = build("small_cnn")
        with pytest.raises(TypeError, match=f"option '{option}' must be an? (integer|real number|string)"):
            tta.adapt(model, policy, **{option: value})
        assert not tta.policy_layers(model), "a refused option must leave the model untouched"
    for value in out_of_range:
        with pytest.raises(ValueError, match=f"option '{option}' must (lie in|be finite|be one of)"):
            tta.adapt(build("small_cnn"), policy, **{option: value})
    for value in accepted:
        _, layer = tta.policy_layers(tta.adapt(build("small_cnn"), policy, **{option: value}))[0]
        stored = getattr(layer, option)
        assert stored == value and type(stored) is declared_options(tta.get_policy(policy).__init__)[option].kind


def test_every_declared_option_has_a_case_here() -> None:
    covered = {(policy, option) for policy, option, *_ in CASES}
    declared = {(policy, option) for policy in tta.list_policies() for option in tta.policy_options(policy)}
    assert declared == covered


@pytest.mark.parametrize("value", [8, 1, np.int64(2)])
def test_momentum_decay_augment_is_refused_naming_the_dua_method(value: object) -> None:
    """DUA's augmented update moved from ``momentum_decay``'s ``augment`` to the method ``dua``."""
    model = build("small_cnn")
    expected = (
        f"momentum_decay no longer takes augment={value}; DUA is a method: "
        f'tta.attach_method(tta.adapt(model, "momentum_decay"), "dua", copies={value})'
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        tta.adapt(model, "momentum_decay", augment=value)
    with pytest.raises(ValueError, match=r"augment=0 .* drop it"):
        tta.adapt(model, "momentum_decay", augment=0)
    assert not tta.policy_layers(model)


def test_options_that_constrain_each_other_are_checked_together() -> None:
    with pytest.raises(ValueError, match="momentum \\+ min_momentum <= 1"):
        tta.adapt(build("small_cnn"), "momentum_decay", momentum=0.9, min_momentum=0.2)


def test_an_option_declared_with_none_takes_none_and_the_policy_says_what_it_means() -> None:
    """``adab2n`` ``momentum: float | None``: None (the default) is the layer's BN momentum."""
    model = build("small_cnn")
    model[1].momentum, model[4].momentum = 0.3, None  # None: PyTorch's cumulative average; taken as 0.1
    tta.adapt(model, "adab2n", momentum=None)
    assert (model[1].momentum, model[4].momentum) == (0.3, 0.1)
    with pytest.raises(TypeError, match=r"option 'momentum' must be a real number or None, got '0.1'"):
        tta.adapt(build("small_cnn"), "adab2n", momentum="0.1")
    with pytest.raises(TypeError, match="option 'kappa' must be a real number, got None"):
        tta.adapt(build("small_cnn"), "adab2n", kappa=None)


def test_a_string_option_names_its_choices() -> None:
    with pytest.raises(ValueError, match="option 'stats' must be one of 'running', 'source', got 'batch'"):
        tta.adapt(build("small_cnn"), "iabn", stats="batch")
    with pytest.raises(TypeError, match="option 'stats' must be a string, got 1"):
        tta.adapt(build("small_cnn"), "iabn", stats=1)


def test_declarations_that_cannot_be_checked_are_refused() -> None:
    def no_choice(self: object, bn: nn.Module, *, stats: str = "a") -> None: ...

    def choice_on_a_number(self: object, bn: nn.Module, *, k: Annotated[float, Choice("a")] = 1.0) -> None: ...

    def two_types(self: object, bn: nn.Module, *, k: int | float = 1) -> None: ...

    for constructor in (no_choice, choice_on_a_number):
        with pytest.raises(TypeError, match="a str option, and only a str option, declares its Choice"):
            declared_options(constructor)
    with pytest.raises(TypeError, match="must be declared int, float, bool or str"):
        declared_options(two_types)


def test_optional_int_and_optional_choice_are_checked_like_their_type() -> None:
    def constructor(
        self: object,
        bn: nn.Module,
        *,
        count: Annotated[int | None, Range(1)] = None,
        mode: Annotated[str | None, Choice("a", "b")] = None,
    ) -> None: ...

    assert validate_options("p", constructor, {"count": None, "mode": None}) == {"count": None, "mode": None}
    assert validate_options("p", constructor, {"count": np.int64(3), "mode": "b"}) == {"count": 3, "mode": "b"}
    with pytest.raises(TypeError, match=r"option 'count' must be an integer or None, got 1.5"):
        validate_options("p", constructor, {"count": 1.5})
    with pytest.raises(ValueError, match="option 'count' must lie in"):
        validate_options("p", constructor, {"count": 0})
    with pytest.raises(TypeError, match="option 'mode' must be a string or None"):
        validate_options("p", constructor, {"mode": 2})
    with pytest.raises(ValueError, match="option 'mode' must be one of 'a', 'b', got 'c'"):
        validate_options("p", constructor, {"mode": "c"})


def test_a_misspelt_option_is_refused_with_the_closest_declared_one() -> None:
    model = build("small_cnn")
    expected = r"policy 'rbn' has no option 'alhpa'; it takes: alpha=0.05; did you mean 'alpha'\?$"
    with pytest.raises(ValueError, match=expected):
        tta.adapt(model, "rbn", alhpa=0.1)
    expected = r"has no option 'LR', 'stepz'; it takes: .*; did you mean 'lr' for 'LR', 'steps' for 'stepz'\?$"
    with pytest.raises(ValueError, match=expected):
        tta.attach_method(tta.adapt(model, "tbn"), "tent", LR=0.1, stepz=2)
    with pytest.raises(ValueError, match=r"has no option 'xyzzy'; it takes: lr=0.001, .*episodic=False$"):
        tta.attach_method(model, "tent", xyzzy=1)
