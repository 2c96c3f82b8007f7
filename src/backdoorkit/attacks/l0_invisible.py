"""l0-Invisible (Li et al., "Invisible Backdoor Attacks on Deep Neural Networks via Steganography and
Regularization", IEEE TDSC 2020), in the form used by I-BAU and Trap-and-Replace: a sparse trigger of
eight coloured pixels on the bottom row, dirty label.

``x' = clip(x * (1 - mask) + pattern)``: the mask covers the bottom row, columns 23-31 of a 32-pixel
wide image (nine pixels), and the pattern has eight non-zero pixels at columns 24-31 of that row.
For other widths the layout is anchored at the bottom-right corner with a column stride of
``max(1, W // 32)``: pattern columns ``W - 1 - stride * o`` for ``o = 0..7`` and the mask from column
``W - 1 - 8 * stride`` to the edge (identical to the above for ``W = 32``).

Defaults: poison rate 0.1, target 0.  Where we differ from the reference code: I-BAU ships a fixed
``l0_inv.png`` computed with the paper's L0-regularised optimisation; we generate the eight pixel
values instead, one grey level per pixel and channel drawn uniformly from 0-255 by a generator
seeded with ``pattern_seed``, so the trigger has the same support and sparsity but other colours.
"""

from __future__ import annotations

import torch
from pydantic import Field

from backdoorkit.attacks import register_attack
from backdoorkit.attacks.base import Attack, AttackParams
from backdoorkit.errors import ConfigError

N_PIXELS = 8
REFERENCE_WIDTH = 32


class L0InvisibleParams(AttackParams):
    pattern_seed: int = Field(0, ge=0, description="seed of the eight pixel colours")


def l0_layout(w: int) -> tuple[torch.Tensor, int]:
    """``(pattern columns [8], first masked column)`` on the bottom row of a ``w``-wide image."""
    stride = max(1, w // REFERENCE_WIDTH)
    cols = w - 1 - stride * torch.arange(N_PIXELS - 1, -1, -1)
    return cols, w - 1 - N_PIXELS * stride


@register_attack
class L0Invisible(Attack):
    """l0-Invisible: eight seeded coloured pixels on the bottom row (sparse trigger), dirty label."""

    name = "l0_invisible"
    paper = (
        "Li et al., Invisible Backdoor Attacks on Deep Neural Networks via Steganography and Regularization, "
        "TDSC 2020"
    )
    Params = L0InvisibleParams
    default_rate = 0.1

    params: L0InvisibleParams

    def validate_shape(self, shape: tuple[int, int, int]) -> None:
        _, h, w = shape
        if l0_layout(w)[1] < 0:
            raise ConfigError(
                f"l0_invisible: the bottom-row trigger needs {N_PIXELS + 1} columns, the image is {h}x{w}"
            )

    def mask_and_pattern(
        self, shape: tuple[int, int, int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-image mask ``[1, 1, H, W]`` and additive pattern ``[1, C, H, W]`` on ``device``."""
        c, h, w = shape
        self.validate_shape(shape)
        cols, first = l0_layout(w)
        gen = torch.Generator().manual_seed(self.params.pattern_seed)
        colours = torch.randint(0, 256, (c, N_PIXELS), generator=gen).float() / 255.0
        mask = torch.zeros(1, 1, h, w)
        mask[..., h - 1, first:] = 1.0
        pattern = torch.zeros(1, c, h, w)
        pattern[0, :, h - 1, cols] = colours
        return mask.to(device), pattern.to(device)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        mask, pattern = self.mask_and_pattern((int(c), int(h), int(w)), x.device)
        return (x * (1 - mask) + pattern).clamp(0.0, 1.0)
