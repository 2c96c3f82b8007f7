"""Small batched image transforms on uint8 tensors.

``resize_uint8`` resizes a whole ``[N, C, H, W]`` batch (bilinear with antialiasing, rounded back to
uint8).  ``stack_images`` turns a list of decoded ``H x W x C`` arrays of possibly different sizes
into one ``[N, C, S, S]`` tensor: images are grouped by size and every group is resized as one batch,
so the cost is one interpolation per distinct size, not one per image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from backdoorkit.errors import DataError


def resize_uint8(x: torch.Tensor, size: int | tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    """Resize a uint8 ``[N, C, H, W]`` batch to ``size`` (an int means square; bilinear, antialiased)."""
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == hw:
        return x
    out = []
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].float()
        part = F.interpolate(part, size=hw, mode="bilinear", align_corners=False, antialias=True)
        out.append(part.clamp_(0, 255).round_().to(torch.uint8))
    if not out:
        return x.new_zeros((0, x.shape[1], *hw))
    return torch.cat(out)


def stack_images(images: Sequence[np.ndarray], size: int | tuple[int, int] | None) -> torch.Tensor:
    """Stack uint8 ``H x W x C`` arrays into ``[N, C, H', W']``.

    ``size=None`` requires every image to have the same shape and keeps it; otherwise every image is
    resized to ``size`` (an int means square) with :func:`resize_uint8`, one batch per distinct size.
    """
    if not images:
        raise DataError("no images to stack")
    channels = {int(a.shape[2]) for a in images}
    if len(channels) != 1:
        raise DataError(f"images have different channel counts {sorted(channels)}")
    (c,) = channels
    if size is None:
        shapes = {a.shape for a in images}
        if len(shapes) != 1:
            raise DataError(f"images have different sizes ({len(shapes)} distinct); give an image size")
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, a in enumerate(images):
        groups[(int(a.shape[0]), int(a.shape[1]))].append(i)
    out = torch.empty((len(images), c, *hw), dtype=torch.uint8)
    for idx in groups.values():
        batch = torch.from_numpy(np.stack([images[i] for i in idx])).permute(0, 3, 1, 2)
        out[torch.as_tensor(idx)] = resize_uint8(batch, hw)
    return out
