"""Helpers for the method tests: learners over every policy and model family, and state comparison."""

from __future__ import annotations

import copy

import torch
from torch import nn

import tta
from tests.tta.conftest import build, inputs

# Options the learners of the tests get unless a test sets them: DUA with 2 copies, not 64, keeps the suite fast.
TEST_OPTIONS: dict[str, dict[str, object]] = {"dua": {"copies": 2}}

# Methods that need image batches (N, C, H, W): they refuse a model without BatchNorm2d (README, Methods).
IMAGE_METHODS = {"dua"}


def learner(model_name: str, policy: str, method: str = "tent", seed: int = 0, **options: object) -> tta.Method:
    """A method attached to the named test model adapted with ``policy`` (:data:`TEST_OPTIONS` by default)."""
    options = {**TEST_OPTIONS.get(method, {}), **options}
    return tta.attach_method(tta.adapt(build(model_name, seed), policy), method, **options)


def refuses(method: str, model_name: str) -> bool:
    """Whether ``method`` must refuse the named test model: an image-only method on a model without a
    BatchNorm2d layer (``mlp_bn1d``, ``cnn_bn3d``)."""
    return method in IMAGE_METHODS and not any(isinstance(m, nn.BatchNorm2d) for m in build(model_name).modules())


def run(model: nn.Module, model_name: str, seeds: range, batch: int = 4) -> list[torch.Tensor]:
    """Outputs for the batches of ``seeds`` (methods adapt with gradients inside, whatever the caller's mode)."""
    with torch.no_grad():
        return [model(inputs(model_name, batch, seed)) for seed in seeds]


def snapshot(model: nn.Module) -> dict[str, object]:
    """A deep copy of the whole state dict, the optimizer state (extra state) included."""
    return copy.deepcopy(model.state_dict())


def assert_same(a: object, b: object, where: str = "") -> None:
    """Nested dicts, lists and tuples of tensors and plain values, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of each prediction's entropy, written out: -sum_k p_k log p_k."""
    return -(torch.softmax(logits, 1) * torch.log_softmax(logits, 1)).sum(1).mean()
