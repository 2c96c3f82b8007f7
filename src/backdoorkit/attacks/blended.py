"""Blended (Chen et al., "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning",
arXiv:1712.05526, 2017): the whole image is mixed with a fixed pattern, dirty label.

``x' = (1 - alpha) * x + alpha * t`` with the same ``alpha`` at training and test time.

Defaults: ``alpha=0.2``, poison rate 0.1, target 0 (BackdoorBench, Trap-and-Replace, ANP all blend
at 0.2).  Where we differ from the official code: the toolboxes blend a cartoon image (Hello Kitty)
that we do not ship; our default pattern is a fixed full-image uniform-noise image drawn from a
generator seeded with ``pattern_seed`` (as ANP does with noise), one value per pixel and channel.
Any image file can be used instead with ``pattern_path``: it is read with Pillow, converted to the
dataset's channel count (``L`` or ``RGB``) and resized (bilinear) to the image size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field, field_validator

from backdoorkit.attacks import register_attack
from backdoorkit.attacks.base import Attack, AttackParams
from backdoorkit.errors import ConfigError


class BlendedParams(AttackParams):
    alpha: float = Field(0.2, ge=0.0, le=1.0, description="blend weight of the pattern")
    pattern_seed: int = Field(0, ge=0, description="seed of the default uniform-noise pattern")
    pattern_path: str | None = Field(None, description="an image file to blend instead of noise")

    @field_validator("pattern_path")
    @classmethod
    def _exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError(f"pattern image {value!r} does not exist")
        return value


def noise_pattern(shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """A ``[C, H, W]`` uniform-noise image in ``[0, 1]`` drawn from a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen)


def image_pattern(path: str | Path, shape: tuple[int, int, int]) -> torch.Tensor:
    """Read an image file as a ``[C, H, W]`` float pattern of the given shape (Pillow, bilinear)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    try:
        with Image.open(Path(path).expanduser()) as img:
            img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise ConfigError(f"blended: cannot read pattern image {path}: {exc}") from None
    t = torch.from_numpy(arr.copy()).float().div_(255.0)
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


@register_attack
class Blended(Attack):
    """Blended: a full-image pattern mixed in with weight ``alpha``, dirty label."""

    name = "blended"
    paper = "Chen et al., Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning, 2017"
    Params = BlendedParams
    default_rate = 0.1

    params: BlendedParams

    def pattern(self, shape: tuple[int, int, int], device: torch.device | str = "cpu") -> torch.Tensor:
        """The blend pattern ``[1, C, H, W]`` for images of ``shape`` on ``device`` (cached)."""
        p = self.params

        def build() -> torch.Tensor:
            if p.pattern_path:
                return image_pattern(p.pattern_path, shape)
            return noise_pattern(shape, p.pattern_seed)

        return self._pattern_on(shape, device, build)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        a = self.params.alpha
        c, h, w = x.shape[1:]
        t = self.pattern((int(c), int(h), int(w)), x.device)
        return (1 - a) * x + a * t
