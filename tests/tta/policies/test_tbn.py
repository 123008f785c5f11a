"""``tbn`` (docs/policies/tbn.md): train-mode batch normalization of each batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import tta
from tests.tta.policies.conftest import EPS, batch, by_hand, channel_dims, source_layer


def test_tbn_equals_functional_batch_norm_in_training_mode() -> None:
    bn = source_layer()
    x = batch((5, 4, 6, 6), 1)
    expected = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, EPS)
    manual = by_hand(x, x.mean(channel_dims(x)), x.var(channel_dims(x), unbiased=False), bn)
    layer = tta.adapt(bn, "tbn")
    with torch.no_grad():
        out = layer(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-5)


def test_tbn_with_one_image_is_instance_normalization() -> None:
    bn = source_layer()
    x = batch((1, 4, 6, 6), 2)
    expected = F.instance_norm(x, weight=bn.weight, bias=bn.bias, eps=EPS)
    with torch.no_grad():
        torch.testing.assert_close(tta.adapt(bn, "tbn")(x), expected, rtol=1e-5, atol=1e-5)
