"""Shared by the policy tests: a source layer, shifted batches, the normalization written by hand, and the
``policy`` parameter of every contract test (:mod:`tests.tta.policies.test_contract`), read from the registry
when the tests are collected."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tta
from tests.tta.conftest import give_source_statistics


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes ``policy`` and does not choose its own runs for every registered policy."""
    chosen = any("policy" in marker.args[0] for marker in metafunc.definition.iter_markers("parametrize"))
    if "policy" in metafunc.fixturenames and not chosen:
        metafunc.parametrize("policy", tta.list_policies())


EPS = 1e-5


def source_layer(channels: int = 4, dims: int = 2, seed: int = 0) -> nn.Module:
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](channels, eps=EPS)
    return give_source_statistics(bn, seed)


def batch(shape: tuple[int, ...], seed: int, shift: float = 0.7, scale: float = 1.5) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale + shift


def by_hand(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, bn: nn.Module) -> torch.Tensor:
    """``w (x - mean) / sqrt(var + eps) + b``, per channel (1-d stats) or per instance (2-d stats)."""
    view = (1, -1) + (1,) * (x.dim() - 2) if mean.dim() == 1 else (*mean.shape,) + (1,) * (x.dim() - 2)
    channel = (1, -1) + (1,) * (x.dim() - 2)
    return (x - mean.view(view)) / torch.sqrt(var.view(view) + EPS) * bn.weight.view(channel) + bn.bias.view(channel)


def channel_dims(x: torch.Tensor) -> list[int]:
    return [0, *range(2, x.dim())]
