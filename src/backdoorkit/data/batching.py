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
from backdoorkit.errors import ConfigError


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


AUGMENTATIONS = ("crop_flip", "crop", "flip", "none")
"""The batched augmentations a training config can name (``TrainConfig.augment``)."""


def augmentation_for(data: ImageSet, kind: bool | str) -> nn.Module | None:
    """The batched augmentation ``kind`` for ``data``: ``True`` / ``"crop_flip"`` the standard random
    crop (+ flip where the set allows it), ``"crop"`` the crop alone, ``"flip"`` a horizontal flip alone
    (none where the set does not allow flips), ``False`` / ``"none"`` no augmentation."""
    if kind is True or kind == "crop_flip":
        return standard_augmentation(data)
    if kind is False or kind == "none":
        return None
    if kind == "crop":
        _, h, w = data.image_shape
        return K.AugmentationSequential(K.RandomCrop((h, w), padding=max(1, h // 8)))
    if kind == "flip":
        return K.AugmentationSequential(K.RandomHorizontalFlip()) if data.hflip else None
    raise ConfigError(f"unknown augmentation {kind!r}; allowed: {', '.join(AUGMENTATIONS)}, true, false")
