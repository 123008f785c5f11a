"""Option checking from each option's declared type and range (spec M8b), before anything is swapped."""

from __future__ import annotations

import numpy as np
import pytest

import tta
from tests.tta.conftest import build

# (policy, option, values refused for their type, values refused for their range, values accepted):
# the ranges of spec M5-M7 written out by hand.
CASES = [
    ("alpha_bn", "alpha", ["0.1", None, True], [-0.1, 1.5, float("nan"), float("inf")], [0, 1, 0.5, np.float32(0.25)]),
    ("rbn", "alpha", ["0.1", [0.1]], [-1e-9, 1.0001, float("-inf")], [0.0, 1.0, np.float64(0.05)]),
    ("momentum_decay", "momentum", ["x"], [-0.1, 1.1, float("nan")], [0.0, 0.5]),
    ("momentum_decay", "decay", [None], [0.0, -0.5, 1.01, float("nan")], [1e-6, 1, 0.94]),
    ("momentum_decay", "min_momentum", [False], [-0.001, 1.5], [0.0, 0.005]),
    ("momentum_decay", "augment", [1.5, 2.0, "2", True], [-1], [0, np.int64(2)]),
    ("unmix_tns", "num_components", [2.5, 16.0, "16"], [0, -3], [1, 2, np.int32(4)]),
    ("unmix_tns", "temperature", ["0.07"], [0.0, -1.0, float("nan"), float("inf")], [1e-3, 1, 0.07]),
    ("unmix_tns", "init_spread", [None], [1.0, -0.1, float("nan")], [0.0, 0.99]),
    ("unmix_tns", "batch_size_max", [64.0], [0], [1, 128]),
    ("unmix_tns", "seed", [1.5, "0", None, True], [-1], [0, 7, np.int64(3)]),
]


@pytest.mark.parametrize("policy, option, wrong_type, out_of_range, accepted", CASES)
def test_each_option_is_checked_for_type_and_range(
    policy: str, option: str, wrong_type: list[object], out_of_range: list[object], accepted: list[object]
) -> None:
    for value in wrong_type:
        model = build("small_cnn")
        with pytest.raises(TypeError, match=f"option '{option}' must be an? (integer|real number)"):
            tta.adapt(model, policy, **{option: value})
        assert not tta.policy_layers(model), "a refused option must leave the model untouched"
    for value in out_of_range:
        with pytest.raises(ValueError, match=f"option '{option}' must (lie in|be finite)"):
            tta.adapt(build("small_cnn"), policy, **{option: value})
    for value in accepted:
        _, layer = tta.policy_layers(tta.adapt(build("small_cnn"), policy, **{option: value}))[0]
        stored = getattr(layer, option)
        assert stored == value and type(stored) is type(tta.policy_options(policy)[option])


def test_every_declared_option_has_a_case_here() -> None:
    covered = {(policy, option) for policy, option, *_ in CASES}
    declared = {(policy, option) for policy in tta.policies() for option in tta.policy_options(policy)}
    assert declared == covered


def test_options_that_constrain_each_other_are_checked_together() -> None:
    with pytest.raises(ValueError, match="momentum \\+ min_momentum <= 1"):
        tta.adapt(build("small_cnn"), "momentum_decay", momentum=0.9, min_momentum=0.2)
