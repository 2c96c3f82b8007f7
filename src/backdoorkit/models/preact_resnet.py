"""PreAct ResNet-18 (He et al., ECCV 2016, "Identity mappings in deep residual networks"), CIFAR stem;
the WaNet paper's model.  Each block is ``conv2(relu(bn2(conv1(relu(bn1 x))))) + shortcut``, where the
shortcut is ``x`` or a 1x1 projection of ``relu(bn1 x)``; a final BN-ReLU precedes pooling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backdoorkit.models.base import ImageClassifier
from backdoorkit.models.skips import Skip


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != planes:
            self.shortcut = nn.Conv2d(cin, planes, 1, stride, bias=False)
        self.skip = Skip()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        short = self.shortcut(pre) if self.shortcut is not None else x
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return self.skip(out, short)


class PreActResNet(ImageClassifier):
    stage_names = ("layer1", "layer2", "layer3", "layer4")
    chain_names = ("normalize", "conv1", "*stages", "bn", "relu", "pool", "flatten", "fc")

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, in_channels, mean, std)
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        cin = width
        for i, depth in enumerate(depths):
            planes = width * 2**i
            blocks = []
            for j in range(depth):
                blocks.append(PreActBlock(cin, planes, stride=(1 if i == 0 or j > 0 else 2)))
                cin = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self._pooled_head(cin, num_classes, preact=True)


def preact_resnet18(**kw: object) -> PreActResNet:
    """PreAct ResNet-18, CIFAR stem (He et al. 2016b)."""
    return PreActResNet((2, 2, 2, 2), **kw)  # type: ignore[arg-type]
