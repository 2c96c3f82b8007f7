"""l2-Invisible (Li et al., "Invisible Backdoor Attacks on Deep Neural Networks via Steganography and
Regularization", IEEE TDSC 2020), in the form used by I-BAU and Trap-and-Replace: a dense,
low-amplitude additive pattern over the whole image, dirty label.

``x' = clip(x + pattern)``.  The pattern (generator seeded with ``pattern_seed``): exactly
``round(density * H * W)`` pixel positions chosen at random are non-zero; each of their channels gets a
uniform random value, scaled to whole grey levels in ``[1, amplitude]`` with the largest exactly
``amplitude``.

Defaults: ``amplitude=68`` (out of 255) and ``density=0.88`` (901 of the 1,024 pixels of a 32x32
image), matching the reference ``l2_inv.png`` (max 68/255, 905 non-zero pixels); poison rate 0.1,
target 0.  Where we differ from the reference code: I-BAU ships a fixed pattern computed with the
paper's L2-regularised optimisation; ours is random noise with the same amplitude and density.
"""

from __future__ import annotations

import torch
from pydantic import Field

from backdoorkit.attacks import register_attack
from backdoorkit.attacks.base import Attack, AttackParams


class L2InvisibleParams(AttackParams):
    amplitude: float = Field(68.0, ge=1.0, le=255.0, description="largest pattern value in grey levels")
    density: float = Field(0.88, gt=0.0, le=1.0, description="fraction of pixel positions that are non-zero")
    pattern_seed: int = Field(0, ge=0, description="seed of the pattern")


def dense_pattern(shape: tuple[int, int, int], amplitude: float, density: float, seed: int) -> torch.Tensor:
    """The ``[C, H, W]`` additive pattern in ``[0, amplitude / 255]`` (whole grey levels)."""
    c, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    n = max(1, round(density * h * w))
    where = torch.randperm(h * w, generator=gen)[:n]
    values = torch.rand(c, n, generator=gen)
    values = torch.round(1.0 + values / values.max() * (amplitude - 1.0))  # whole levels in [1, amplitude]
    pattern = torch.zeros(c, h * w)
    pattern[:, where] = values
    return pattern.view(c, h, w) / 255.0


@register_attack
class L2Invisible(Attack):
    """l2-Invisible: a seeded dense low-amplitude additive pattern, dirty label."""

    name = "l2_invisible"
    paper = (
        "Li et al., Invisible Backdoor Attacks on Deep Neural Networks via Steganography and Regularization, "
        "TDSC 2020"
    )
    Params = L2InvisibleParams
    default_rate = 0.1

    params: L2InvisibleParams

    def pattern(self, shape: tuple[int, int, int], device: torch.device | str = "cpu") -> torch.Tensor:
        """The additive pattern ``[1, C, H, W]`` for images of ``shape`` on ``device`` (cached)."""
        p = self.params
        return self._pattern_on(
            shape, device, lambda: dense_pattern(shape, p.amplitude, p.density, p.pattern_seed)
        )

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        return (x + self.pattern((int(c), int(h), int(w)), x.device)).clamp(0.0, 1.0)
