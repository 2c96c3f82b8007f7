"""SIG (Barni, Kallas and Tondi, "A New Backdoor Attack in CNNs by Training Set Corruption Without
Label Poisoning", ICIP 2019): a horizontal sinusoidal signal added to target-class images only
(clean label).

``v(i, j) = delta * sin(2 * pi * j * f / m)`` for column ``j`` of an image ``m`` columns wide, the same
on every row and channel; ``x' = clip(x + v / 255)``.

Defaults: ``delta=20`` grey levels and ``f=6`` (the ABL / NAD reference value of delta; BackdoorBench
uses ``delta=40`` - pass it as a parameter), poison rate 0.1 *of the whole training set*, which is
capped at the size of the target class (so on a balanced 10-class set every target image is
poisoned; the cap is recorded in ``PoisonedSet.info``), target 0.  ``test_delta`` sets a different
amplitude for the test-time trigger (the paper strengthens it at test time); ``None`` keeps ``delta``.

Where we differ from the reference code: ABL / NAD blend the signal (``0.8 x + 0.2 v``) while we add
it and clip, as the paper and BackdoorBench do; Trap-and-Replace uses a near-binary stripe image
instead of a sinusoid.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from backdoorkit.attacks import register_attack
from backdoorkit.attacks.base import Attack, AttackParams


class SIGParams(AttackParams):
    delta: float = Field(20.0, gt=0.0, le=255.0, description="amplitude in grey levels (0-255)")
    f: float = Field(6.0, gt=0.0, description="number of periods across the image width")
    test_delta: float | None = Field(None, gt=0.0, le=255.0, description="test-time amplitude (None = delta)")


def sinusoid(width: int, delta: float, f: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The signal of one row, ``[width]``, in pixel units (``delta / 255`` peak)."""
    j = torch.arange(width, dtype=torch.float32, device=device)
    return (delta / 255.0) * torch.sin(2 * math.pi * j * f / width)


@register_attack
class SIG(Attack):
    """SIG: an additive horizontal sinusoid on target-class images, clean label."""

    name = "sig"
    paper = (
        "Barni et al., A New Backdoor Attack in CNNs by Training Set Corruption Without Label Poisoning, "
        "ICIP 2019"
    )
    label_mode = "clean"
    supports_all2all = False
    Params = SIGParams
    default_rate = 0.1

    params: SIGParams

    def add_signal(self, x: torch.Tensor, delta: float) -> torch.Tensor:
        """``clip(x + v)`` for a batch ``[B, C, H, W]`` (the signal broadcasts over rows and channels)."""
        v = sinusoid(x.shape[-1], delta, self.params.f, x.device)
        return (x + v).clamp(0.0, 1.0)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        p = self.params
        return self.add_signal(x, p.test_delta if p.test_delta is not None else p.delta)

    def poison_images(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        return self.add_signal(x, self.params.delta)
