"""``rbn`` (docs/policies/rbn.md): the EMA of batch statistics."""

from __future__ import annotations

import torch

import tta
from tests.tta.policies.conftest import batch, by_hand, channel_dims, source_layer


def test_rbn_endpoints_and_ema() -> None:
    x = batch((6, 4, 5, 5), 4)
    assert torch.equal(tta.adapt(source_layer(), "rbn", alpha=0.0)(x), source_layer()(x))
    with torch.no_grad():
        tbn_out = tta.adapt(source_layer(), "tbn")(x)
        torch.testing.assert_close(tta.adapt(source_layer(), "rbn", alpha=1.0)(x), tbn_out, rtol=1e-5, atol=1e-5)

    bn, a = source_layer(), 0.05
    layer = tta.adapt(source_layer(), "rbn")
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    for seed in range(3):
        x = batch((5, 4, 4, 4), seed)
        out = layer(x)
        dims = channel_dims(x)
        mean = (1 - a) * mean + a * x.mean(dims)
        var = (1 - a) * var + a * x.var(dims, unbiased=False)
        torch.testing.assert_close(out, by_hand(x, mean, var, bn))
