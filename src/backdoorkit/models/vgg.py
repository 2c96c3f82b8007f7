"""VGG-16 with batch norm (Simonyan & Zisserman, ICLR 2015), CIFAR variant: the control model without
skip connections.  Five stages ``stage1..stage5`` each end in a 2x2 max-pool; the head is one linear
layer after global average pooling.  ``width`` is the first stage's channel count (64 = standard)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from backdoorkit.models.base import ImageClassifier

VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG(ImageClassifier):
    stage_names = ("stage1", "stage2", "stage3", "stage4", "stage5")
    chain_names = ("normalize", "*stages", "pool", "flatten", "fc")

    def __init__(
        self,
        cfg: Sequence[Sequence[int]] = VGG16,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, in_channels, mean, std)
        cin = in_channels
        for i, stage in enumerate(cfg):
            layers: list[nn.Module] = []
            for c in stage:
                cout = max(1, c * width // 64)
                layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            self.add_module(f"stage{i + 1}", nn.Sequential(*layers))
        self._pooled_head(cin, num_classes)


def vgg16_bn(**kw: object) -> VGG:
    """VGG-16 with batch norm, CIFAR variant (no skip connections; a control)."""
    return VGG(VGG16, **kw)  # type: ignore[arg-type]
