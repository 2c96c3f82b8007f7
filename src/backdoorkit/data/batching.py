"""Batches without per-sample Python: index tensors over a device-resident set + batched augmentation.

The standard CIFAR augmentation (random crop with zero padding of 1/8 of the side, horizontal flip
where the dataset allows it) runs on whole float batches through kornia.
"""

from __future__ import annotations

from collections.abc import Iterator

import kornia.augmentation as K
import torch
from torch import nn

from backdoorkit.data.imageset import ImageSet


def index_batches(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    device: torch.device | str = "cpu",
) -> Iterator[torch.Tensor]:
    """Yield index tensors covering ``range(n)`` in batches (shuffled with ``generator``)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def standard_augmentation(data: ImageSet, padding: int | None = None) -> nn.Module:
    """Random crop with zero padding (1/8 of the side) and, if the set allows it, a horizontal flip."""
    _, h, w = data.image_shape
    pad = max(1, h // 8) if padding is None else padding
    ops: list[nn.Module] = [K.RandomCrop((h, w), padding=pad)]
    if data.hflip:
        ops.append(K.RandomHorizontalFlip())
    return K.AugmentationSequential(*ops)
