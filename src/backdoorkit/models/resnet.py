"""ResNet-18/34/50 with the CIFAR stem (He et al., CVPR 2016; CIFAR variant as in the backdoor
literature: 3x3 stem convolution, no max-pool).

``width`` is the channel count of the first stage (64 is the standard network; 16 or 32 give the
narrow networks used for CPU runs).  Each block's residual addition is a :class:`Skip` named after the
block (``layer1.0`` ... ``layer4.1`` for ResNet-18).  The projection shortcut is ``<block>.shortcut``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backdoorkit.models.base import ImageClassifier
from backdoorkit.models.skips import Skip


def _projection(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; ``relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))``."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(cin, planes, stride)
        self.skip = Skip()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(self.skip(out, self.shortcut(x)))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4) bottleneck block."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _projection(cin, cout, stride)
        self.skip = Skip()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(self.skip(out, self.shortcut(x)))


class ResNet(ImageClassifier):
    """CIFAR-style ResNet: 3x3 stem, four stages ``layer1..layer4``, global average pool, ``fc``."""

    stage_names = ("layer1", "layer2", "layer3", "layer4")
    chain_names = ("normalize", "conv1", "bn1", "relu", "*stages", "pool", "flatten", "fc")

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, in_channels, mean, std)
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        cin = width
        for i, depth in enumerate(depths):
            planes = width * 2**i
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, planes, stride=(1 if i == 0 or j > 0 else 2)))
                cin = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self._pooled_head(cin, num_classes)


def resnet18(**kw: object) -> ResNet:
    """ResNet-18, CIFAR stem (He et al. 2016)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **kw)  # type: ignore[arg-type]


def resnet34(**kw: object) -> ResNet:
    """ResNet-34, CIFAR stem (He et al. 2016)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), **kw)  # type: ignore[arg-type]


def resnet50(**kw: object) -> ResNet:
    """ResNet-50 (bottleneck blocks), CIFAR stem (He et al. 2016)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **kw)  # type: ignore[arg-type]
