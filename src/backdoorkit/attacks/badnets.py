"""BadNets (Gu et al., "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply
Chain", 2017 / IEEE Access 2019): a small fixed patch stamped onto the image, dirty label.

Variants:

* ``white`` (default): a ``size x size`` white square, as BackdoorBench's 3x3 square flush to the
  bottom-right corner; the Trap-and-Replace "BadNet-White" is ``size=4, margin=1``.
* ``grid``: the 3x3 black-and-white grid of ABL / NAD / Trap-and-Replace ("gridTrigger") and ANP,
  rows/cols 29-31 on 32x32 images: ``[[0, 0, 1], [0, 1, 0], [1, 0, 1]]`` (1 = white), the same on
  every channel; for other sizes, a checkerboard whose bottom-right pixel is white.

Defaults: ``variant="white", size=3, margin=0`` (bottom-right), poison rate 0.1, target 0.
``row``/``col`` place the patch's top-left corner explicitly instead.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from backdoorkit.attacks import register_attack
from backdoorkit.attacks.base import Attack, AttackParams
from backdoorkit.errors import ConfigError

GRID3 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])


class BadNetsParams(AttackParams):
    variant: Literal["white", "grid"] = "white"
    size: int = Field(3, ge=1)
    margin: int = Field(0, ge=0, description="distance of the patch from the bottom-right corner")
    row: int | None = Field(None, ge=0, description="explicit top-left row (overrides margin)")
    col: int | None = Field(None, ge=0, description="explicit top-left column (overrides margin)")


def patch_pattern(variant: str, size: int) -> torch.Tensor:
    """The ``size x size`` patch values in ``[0, 1]``."""
    if variant == "white":
        return torch.ones(size, size)
    if size == 3:
        return GRID3.clone()
    i = torch.arange(size)
    # checkerboard with a white bottom-right pixel
    return (((i[:, None] + i[None, :]) % 2) == ((2 * (size - 1)) % 2)).float()


@register_attack
class BadNets(Attack):
    """BadNets: a small patch (white square or black-and-white grid), dirty label."""

    name = "badnets"
    paper = "Gu et al., BadNets, IEEE Access 2019"
    Params = BadNetsParams
    default_rate = 0.1

    params: BadNetsParams

    def origin(self, h: int, w: int) -> tuple[int, int]:
        p = self.params
        r = p.row if p.row is not None else h - p.margin - p.size
        c = p.col if p.col is not None else w - p.margin - p.size
        return r, c

    def validate_shape(self, shape: tuple[int, int, int]) -> None:
        _, h, w = shape
        r, c = self.origin(h, w)
        s = self.params.size
        if r < 0 or c < 0 or r + s > h or c + s > w:
            raise ConfigError(f"badnets: a {s}x{s} patch at row {r}, col {c} does not fit in a {h}x{w} image")

    def mask_and_pattern(
        self, shape: tuple[int, int, int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-image mask ``[1, 1, H, W]`` and pattern ``[1, C, H, W]`` on ``device``."""
        c, h, w = shape
        self.validate_shape(shape)
        r, col = self.origin(h, w)
        s = self.params.size
        mask = torch.zeros(1, 1, h, w, device=device)
        mask[..., r : r + s, col : col + s] = 1.0
        pattern = torch.zeros(1, c, h, w, device=device)
        pattern[..., r : r + s, col : col + s] = patch_pattern(self.params.variant, s).to(device)
        return mask, pattern

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        mask, pattern = self.mask_and_pattern(tuple(x.shape[1:]), x.device)  # type: ignore[arg-type]
        return x * (1 - mask) + pattern * mask
