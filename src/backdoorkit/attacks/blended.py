"""Blended (Chen et al., "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning",
arXiv:1712.05526, 2017): the whole image is mixed with a fixed pattern, dirty label.

``x' = (1 - alpha) * x + alpha * t`` with the same ``alpha`` at training and test time.

Defaults: ``alpha=0.2``, poison rate 0.1, target 0 (BackdoorBench, Trap-and-Replace, ANP all blend
at 0.2).  Where we differ from the official code: the toolboxes blend a cartoon image (Hello Kitty)
that we do not ship; our default pattern is a fixed full-image uniform-noise image drawn from a
generator seeded with ``pattern_seed`` (as ANP does with noise), one value per pixel and channel.
Any image file can be used instead with ``pattern_path``: it is read with Pillow, converted to the
dataset's channel count (``L`` or ``RGB``) and resized (bilinear) to the image size.

``pattern="patch"``: the SSFT authors' victim (official ``train_backdoormodel.py``, BackdoorBox's
``Blended`` with a patch pattern and weight): a ``patch_size x patch_size`` white square at the
bottom-right corner blended at ``alpha``, the rest of the image untouched,
``x' = x (1 - alpha m) + alpha m`` with ``m`` the patch mask.  This is the Blended of the SSFT paper's
tables (its lower ASR, 83 %, comes from this weak trigger); ``pattern="noise"`` (default) is the
full-image blend of the Blended paper.

``clean_label=True``: the clean-label variant of the Partial-Training paper's CIFAR-10 rows (Li & Gao,
2024, "CLA" Blend at 1 %): target-class images are blended and keep their label, so the rate (of the
whole set) is capped at the target class; the test-time trigger is the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator

from backdoorkit.attacks import register_attack
from backdoorkit.attacks.base import Attack, AttackParams, LabelModeSwitch
from backdoorkit.errors import ConfigError


class BlendedParams(AttackParams):
    alpha: float = Field(0.2, ge=0.0, le=1.0, description="blend weight of the pattern")
    pattern_seed: int = Field(0, ge=0, description="seed of the default uniform-noise pattern")
    pattern_path: str | None = Field(None, description="an image file to blend instead of noise")
    pattern: Literal["noise", "patch"] = Field("noise", description="full-image pattern or a corner patch")
    patch_size: int = Field(3, ge=1, description='pattern="patch": side of the white bottom-right square')
    clean_label: bool = Field(False, description="blend target-class images and keep their labels")

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
    """Blended: a full-image pattern mixed in with weight ``alpha``, dirty label (or clean label)."""

    name = "blended"
    paper = "Chen et al., Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning, 2017"
    Params = BlendedParams
    default_rate = 0.1
    label_mode = LabelModeSwitch("clean_label", default="dirty")  # type: ignore[assignment]

    params: BlendedParams

    def pattern(self, shape: tuple[int, int, int], device: torch.device | str = "cpu") -> torch.Tensor:
        """The blend pattern ``[1, C, H, W]`` for images of ``shape`` on ``device`` (cached)."""
        p = self.params

        def build() -> torch.Tensor:
            if p.pattern_path:
                return image_pattern(p.pattern_path, shape)
            return noise_pattern(shape, p.pattern_seed)

        return self._pattern_on(shape, device, build)

    def validate_shape(self, shape: tuple[int, int, int]) -> None:
        _, h, w = shape
        s = self.params.patch_size
        if self.params.pattern == "patch" and (s > h or s > w):
            raise ConfigError(f"blended: a {s}x{s} patch does not fit in a {h}x{w} image")

    def patch_mask(self, shape: tuple[int, int, int], device: torch.device | str = "cpu") -> torch.Tensor:
        """``pattern="patch"``: the blend weight per pixel ``[1, 1, H, W]`` (alpha inside the square)."""
        _, h, w = shape
        s, a = self.params.patch_size, self.params.alpha

        def build() -> torch.Tensor:
            m = torch.zeros(1, h, w)
            m[:, h - s :, w - s :] = a
            return m

        return self._pattern_on((-1, h, w), device, build)  # -1: never a real channel count

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = (int(v) for v in x.shape[1:])
        if self.params.pattern == "patch":
            self.validate_shape((c, h, w))
            m = self.patch_mask((c, h, w), x.device)
            return x * (1 - m) + m  # a white square (value 1) blended at alpha
        a = self.params.alpha
        t = self.pattern((c, h, w), x.device)
        return (1 - a) * x + a * t
