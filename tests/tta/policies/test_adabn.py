"""``adabn`` (docs/policies/adabn.md): the statistics of everything seen."""

from __future__ import annotations

import torch

import tta
from tests.tta.policies.conftest import batch, by_hand, channel_dims, source_layer


def test_adabn_normalizes_with_statistics_of_everything_seen() -> None:
    bn = source_layer()
    layer = tta.adapt(bn, "adabn")
    batches = [batch((b, 4, 3, 3), seed, shift=seed) for seed, b in enumerate([3, 7, 1, 5], start=10)]
    for t in range(1, len(batches) + 1):
        out = layer(batches[t - 1])
        seen = torch.cat(batches[:t])
        dims = channel_dims(seen)
        mean, var = seen.mean(dims), seen.var(dims, unbiased=False)
        state_mean, state_var = layer.adapted_stats()
        torch.testing.assert_close(state_mean, mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(state_var, var, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, by_hand(batches[t - 1], mean, var, bn), rtol=1e-4, atol=1e-4)
