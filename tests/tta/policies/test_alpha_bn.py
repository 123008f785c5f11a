"""``alpha_bn`` (docs/policies/alpha_bn.md): the fixed mix of source and batch statistics."""

from __future__ import annotations

import torch

import tta
from tests.tta.policies.conftest import batch, by_hand, channel_dims, source_layer


def test_alpha_bn_endpoints_and_mix() -> None:
    x = batch((6, 4, 5, 5), 3)
    source_out = source_layer()(x)
    assert torch.equal(tta.adapt(source_layer(), "alpha_bn", alpha=0.0)(x), source_out)

    bn = source_layer()
    dims = channel_dims(x)
    expected = by_hand(x, x.mean(dims), x.var(dims, unbiased=True), bn)
    torch.testing.assert_close(tta.adapt(bn, "alpha_bn", alpha=1.0)(x), expected, rtol=1e-5, atol=1e-5)

    bn = source_layer()
    a = 0.1
    mean = (1 - a) * bn.running_mean + a * x.mean(dims)
    var = (1 - a) * bn.running_var + a * x.var(dims, unbiased=True)
    torch.testing.assert_close(tta.adapt(bn, "alpha_bn")(x), by_hand(x, mean, var, bn), rtol=1e-5, atol=1e-5)
