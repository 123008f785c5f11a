"""``momentum_decay`` (docs/policies/momentum_decay.md): the running update and its momentum schedule."""

from __future__ import annotations

import torch

import tta
from tests.tta.policies.conftest import batch, by_hand, channel_dims, source_layer


def test_momentum_decay_with_no_decay_matches_pytorch_running_update() -> None:
    m = 0.2
    layer = tta.adapt(source_layer(), "momentum_decay", momentum=m, decay=1.0, min_momentum=0.0)
    reference = source_layer()
    reference.momentum = m
    reference.train()
    for seed in range(4):
        x = batch((6, 4, 5, 5), seed)
        out = layer(x)
        reference(x)  # train mode: PyTorch's own running update with momentum m
        torch.testing.assert_close(layer.running_mean, reference.running_mean)
        torch.testing.assert_close(layer.running_var, reference.running_var)
        # normalized with the *updated* running statistics (docs/policies/momentum_decay.md)
        torch.testing.assert_close(out, by_hand(x, reference.running_mean, reference.running_var, reference))


def test_momentum_decay_schedule() -> None:
    m0, decay, floor = 0.1, 0.94, 0.005
    bn = source_layer()
    layer = tta.adapt(source_layer(), "momentum_decay")
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    for t in range(1, 5):
        x = batch((4, 4, 3, 3), t)
        out = layer(x)
        m_t = m0 * decay**t + floor
        dims = channel_dims(x)
        mean = (1 - m_t) * mean + m_t * x.mean(dims)
        var = (1 - m_t) * var + m_t * x.var(dims, unbiased=True)
        torch.testing.assert_close(layer.running_mean, mean)
        torch.testing.assert_close(layer.running_var, var)
        torch.testing.assert_close(out, by_hand(x, mean, var, bn))
