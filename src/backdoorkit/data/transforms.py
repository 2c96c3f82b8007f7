"""Small batched image transforms on uint8 tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_uint8(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize a uint8 ``[N, C, H, W]`` batch to ``size x size`` (bilinear with antialiasing)."""
    out = []
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(part.clamp_(0, 255).round_().to(torch.uint8))
    if not out:
        return x.new_zeros((0, x.shape[1], size, size))
    return torch.cat(out)
