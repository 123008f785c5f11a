"""Bad batches: clear errors, and a policy state that a bad batch never corrupts (spec M0)."""

from __future__ import annotations

import pytest
import torch

import tta
from tests.tta.conftest import build, inputs
from tests.tta.test_invariants import snapshot, assert_same_state

POLICIES = tta.list_policies()


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
@pytest.mark.parametrize("policy", POLICIES)
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


@pytest.mark.parametrize("policy", POLICIES)
def test_empty_batch_is_refused_and_changes_nothing(policy: str) -> None:
    model = tta.adapt(build("small_cnn"), policy)
    state = snapshot(model)
    with pytest.raises(ValueError, match="empty batch"):
        model[1](torch.zeros(0, 8, 4, 4))
    with pytest.raises(ValueError, match="empty batch"):
        model[1](torch.zeros(2, 8, 0, 4))
    assert_same_state(snapshot(model), state)


def test_wrong_channel_count_rank_and_dtype_are_named() -> None:
    layer = tta.adapt(build("small_cnn"), "adabn")[1]
    with pytest.raises(ValueError, match="expected 8 channels"):
        layer(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="expected 4D input"):
        layer(torch.randn(2, 8, 4))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.zeros(2, 8, 4, 4, dtype=torch.uint8))
