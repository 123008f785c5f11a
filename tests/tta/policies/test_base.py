"""The policy layer every policy derives from: input checks and the declared state."""

from __future__ import annotations

import pytest
import torch

import tta
from tests.tta.conftest import build


def test_wrong_channel_count_rank_and_dtype_are_named() -> None:
    layer = tta.adapt(build("small_cnn"), "adabn")[1]
    with pytest.raises(ValueError, match="expected 8 channels"):
        layer(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="expected 4D input"):
        layer(torch.randn(2, 8, 4))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.zeros(2, 8, 4, 4, dtype=torch.uint8))
