"""Two more Fashion-MNIST model families beside the bundled ResNet, to check that a choice transfers.

- :class:`FashionVGG`: plain 3x3 conv-BN-ReLU stacks with max pooling (Simonyan and Zisserman 2015), no
  shortcut: BatchNorm after every convolution, 5 layers.
- :class:`FashionPreActResNet`: a wide pre-activation ResNet (He et al. 2016, "Identity mappings";
  Zagoruyko and Komodakis 2016): BN-ReLU before each convolution, a final BN, 7 layers.

Both take ``N x 1 x 28 x 28`` floats in [0, 1] (the standardization is inside, as in the bundled model) and
return ``N x num_classes`` logits. Train one with ``tta-bench train-source --arch vgg`` (or ``preact``);
evaluate a checkpoint with ``--model <file> --arch tta_bench.model_families:FashionVGG``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tta_bench.source_model import FMNIST_MEAN, FMNIST_STD, FashionResNet, Standardize

__all__ = ["FAMILIES", "FashionPreActResNet", "FashionVGG", "build_family", "check_family"]


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]


class FashionVGG(nn.Module):
    """Stages of 3x3 conv-BN-ReLU layers, each stage closed by a 2x2 max pool, then global average
    pooling and a linear classifier (widths 16 | 32-32 | 64-64: 28 -> 14 -> 7 -> 3; about 5.5 M
    multiply-adds per image, twice the bundled model)."""

    def __init__(self, widths: tuple[tuple[int, ...], ...] = ((16,), (32, 32), (64, 64)), num_classes: int = 10):
        super().__init__()
        self.normalize = Standardize(FMNIST_MEAN, FMNIST_STD)
        layers: list[nn.Module] = []
        in_ch = 1
        for stage in widths:
            for width in stage:
                layers += _conv_bn_relu(in_ch, width)
                in_ch = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.features(self.normalize(x))), 1))


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice, with an identity (or 1x1 conv) shortcut taken after the first BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(self.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class FashionPreActResNet(nn.Module):
    """A stem conv, three pre-activation blocks (widths 24, 48, 96: 1.5 times the bundled model's;
    strides 2, 2, 2), a final BN-ReLU, global average pooling and a linear classifier (about 5.3 M
    multiply-adds per image)."""

    def __init__(self, widths: tuple[int, ...] = (24, 48, 96), num_classes: int = 10) -> None:
        super().__init__()
        self.normalize = Standardize(FMNIST_MEAN, FMNIST_STD)
        self.stem = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        blocks, in_ch = [], 16
        for width, stride in zip(widths, (2, 2, 2)):
            blocks.append(PreActBlock(in_ch, width, stride))
            in_ch = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn(self.blocks(self.stem(self.normalize(x)))))
        return self.fc(torch.flatten(self.pool(out), 1))


FAMILIES: dict[str, type[nn.Module]] = {
    "resnet": FashionResNet,
    "vgg": FashionVGG,
    "preact": FashionPreActResNet,
}
"""The architectures ``tta-bench train-source --arch`` trains: ``resnet`` is the bundled model's."""


def check_family(name: str) -> None:
    """A ValueError naming the known families unless ``name`` is one (a key of :data:`FAMILIES`)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; choose from: {', '.join(FAMILIES)}")


def build_family(name: str) -> nn.Module:
    """A freshly initialized model of the family ``name`` (a key of :data:`FAMILIES`)."""
    check_family(name)
    return FAMILIES[name]()
