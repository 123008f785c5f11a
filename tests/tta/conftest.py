"""Models with BatchNorm of every kind the core must attach to, with non-trivial source statistics."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import tta


def give_source_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters, as a trained model would have; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=generator) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(c, generator=generator) * 0.1)
    return model.eval()


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def resnet18() -> nn.Module:
    return torchvision.models.resnet18(num_classes=10)


def mlp_bn1d() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def cnn_bn3d() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(3, 6, 3, padding=1),
        nn.BatchNorm3d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(6, 10),
    )


# name -> (factory, input shape without the batch dim)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "small_cnn": (small_cnn, (3, 16, 16)),
    "resnet18": (resnet18, (3, 16, 16)),  # 1x1 maps in layer3-4: n = B there
    "mlp_bn1d": (mlp_bn1d, (3, 8, 8)),
    "cnn_bn3d": (cnn_bn3d, (3, 4, 6, 6)),
}


@functools.cache
def _built(name: str, seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MODELS[name][0]()
    return give_source_statistics(model, seed)


def build(name: str, seed: int = 0) -> nn.Module:
    """A fresh copy of the named model, weights and source statistics drawn from ``seed``."""
    return copy.deepcopy(_built(name, seed))


def inputs(name: str, batch: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A shifted input batch (mean 0.7, std 1.5) for the named model."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, *MODELS[name][1], generator=generator) * 1.5 + 0.7).to(dtype)


@pytest.fixture(params=list(MODELS))
def model_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def full_float32_precision() -> Iterator[None]:
    """TF32 convolutions differ from the CPU by about 1e-3: CUDA tests compare in full float32."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def with_classifier(model: nn.Module, policy: str, features: int, classes: int = 3) -> nn.Module:
    """``model`` followed by a linear classifier on its ``features`` flattened outputs when ``policy`` learns
    from the model's predictions (``balanced`` needs (B, K) logits); unchanged for the other policies, which
    are tested on the bare layers."""
    if not tta.get_policy(policy).uses_predictions:
        return model
    with torch.random.fork_rng():
        torch.manual_seed(0)
        head = nn.Linear(features, classes)
    return nn.Sequential(model, nn.Flatten(), head).eval()


def run(model: torch.nn.Module, name: str, seeds: range, batch: int = 4) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(inputs(name, batch, seed)) for seed in seeds]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
