"""Wide ResNets (Zagoruyko & Komodakis, BMVC 2016), the model of the ABL, NAD and Trap-and-Replace
papers (WRN-16-1 on CIFAR-10 and GTSRB).

``wrn(depth, widen)`` has ``(depth - 4) / 6`` pre-activation blocks in each of three groups
``block1..block3`` with 16k, 32k and 64k channels (k = ``widen``) after a 16-channel stem, then
BN-ReLU, global average pooling and ``fc``.  Skips are named ``block1.0`` ... ``block3.1`` (WRN-16).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backdoorkit.models.base import ImageClassifier
from backdoorkit.models.skips import Skip


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = float(dropout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.skip = Skip()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        short = self.shortcut(pre) if self.shortcut is not None else x
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.skip(self.conv2(out), short)


class WideResNet(ImageClassifier):
    stage_names = ("block1", "block2", "block3")
    chain_names = ("normalize", "conv1", "*stages", "bn", "relu", "pool", "flatten", "fc")

    def __init__(
        self,
        depth: int = 16,
        widen: int = 1,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, in_channels, mean, std)
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n + 4 (10, 16, 22, 28 ...), got {depth}")
        if widen < 1:
            raise ValueError(f"widen must be >= 1, got {widen}")
        n = (depth - 4) // 6
        channels = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        cin = channels[0]
        for g in range(3):
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(cin, channels[g + 1], (1 if g == 0 or j > 0 else 2), dropout))
                cin = channels[g + 1]
            self.add_module(f"block{g + 1}", nn.Sequential(*blocks))
        self._pooled_head(cin, num_classes, preact=True)


def wrn(depth: int = 16, widen: int = 1, **kw: object) -> WideResNet:
    """Wide ResNet WRN-depth-widen (Zagoruyko & Komodakis 2016)."""
    return WideResNet(depth=depth, widen=widen, **kw)  # type: ignore[arg-type]


def wrn16_1(**kw: object) -> WideResNet:
    """WRN-16-1, the ABL / NAD / Trap-and-Replace CIFAR model."""
    kw.setdefault("depth", 16)
    kw.setdefault("widen", 1)
    return WideResNet(**kw)  # type: ignore[arg-type]
