"""The bundled Fashion-MNIST source model: a small ResNet with BatchNorm.

The model takes 1x28x28 images as floats in [0, 1]; the input standardization is a fixed buffer
inside the model, so callers (streams, policies, the benchmark) never normalize themselves.
Train it with ``tta-bench train-source`` (``tta_bench.train_source.train_source``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "FMNIST_MEAN",
    "FMNIST_STD",
    "WEIGHTS_PATH",
    "FashionResNet",
    "build_model",
    "load_bundled_model",
]

#: Per-pixel mean and standard deviation of the Fashion-MNIST training split (pixels in [0, 1]).
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530

#: Where the shipped checkpoint lives (a plain float32 state_dict).
WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "fmnist_resnet.pt"

#: Channel widths of the three stages; the stem has ``WIDTHS[0]`` channels.
WIDTHS = (16, 32, 64)
#: Stride of each stage's first block: 28x28 -> 14 -> 7 -> 4. Only the stem runs at full resolution,
#: which keeps the model cheap (about 2.7 M multiply-adds per image) for the many benchmark forwards.
STRIDES = (2, 2, 2)


class Standardize(nn.Module):
    """Subtract a fixed per-channel mean and divide by a fixed std (buffers, not parameters)."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: float | list[float], std: float | list[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if torch.any(std_t <= 0):
            raise ValueError(f"std must be positive, got {std_t.flatten().tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut (He et al. 2016)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class FashionResNet(nn.Module):
    """Stem conv, stages of ``blocks`` BasicBlocks (the first strided), global average pool, linear.

    Input: ``N x 1 x 28 x 28`` floats in [0, 1]; output: ``N x num_classes`` logits.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = WIDTHS,
        strides: tuple[int, ...] = STRIDES,
        blocks: int = 1,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if len(widths) != len(strides):
            raise ValueError(f"one stride per stage: widths {widths}, strides {strides}")
        self.normalize = Standardize(FMNIST_MEAN, FMNIST_STD)
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        in_ch = widths[0]
        for width, stride in zip(widths, strides):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(in_ch, width, stride if b == 0 else 1))
                in_ch = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def build_model() -> FashionResNet:
    """A freshly initialized bundled architecture (what ``fmnist_resnet.pt`` holds the weights of)."""
    return FashionResNet()


def load_bundled_model(device: torch.device | str | None = None) -> nn.Module:
    """The shipped Fashion-MNIST source model, in eval mode.

    Loads ``benchmarks/weights/fmnist_resnet.pt`` (a plain state_dict) with ``weights_only=True``. The
    conv weights are put in channels-last memory format, about 30% faster on CPU; inputs may be in
    either format. Raises ``FileNotFoundError`` naming the file and ``tta-bench train-source`` when
    the checkpoint is missing.
    """
    if not WEIGHTS_PATH.is_file():
        raise FileNotFoundError(
            f"bundled model weights not found at {WEIGHTS_PATH}; "
            "train them with `tta-bench train-source` (about 6 minutes on one CPU thread)"
        )
    state = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)
    model = build_model()
    model.load_state_dict(state)
    # Module.to takes memory_format beside a device; torch's overloads only list it alone
    return model.to(device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
