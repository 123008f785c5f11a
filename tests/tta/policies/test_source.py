"""``source`` (docs/policies/source.md): the original layer's eval-mode output, bit for bit."""

from __future__ import annotations

import torch

import tta
from tests.tta.policies.conftest import batch, source_layer


def test_source_is_the_original_layer_bit_for_bit() -> None:
    bn = source_layer()
    x = batch((5, 4, 6, 6), 1)
    expected = bn(x)
    layer = tta.adapt(bn, "source")
    assert torch.equal(layer(x), expected)
