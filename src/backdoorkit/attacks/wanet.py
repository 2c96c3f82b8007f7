"""WaNet (Nguyen and Tran, "WaNet - Imperceptible Warping-based Backdoor Attack", ICLR 2021): the
trigger is a fixed, smooth geometric warp of the whole image, dirty label.

The warping field: a ``k x k x 2`` control grid drawn uniformly from ``[-1, 1]`` (generator seeded with
``pattern_seed``), divided by its mean absolute value, upsampled bicubically to ``H x W``; the
sampling grid is ``clamp((identity + s * field / H) * grid_rescale, -1, 1)`` in the ``[-1, 1]``
coordinates of ``F.grid_sample`` (bilinear, ``align_corners=True``).

Noise mode: ``cross_ratio * (number of poisoned rows)`` further rows - chosen at random (seeded with
the poisoning seed) among the rows that are not poisoned, any class - are warped with the same field
plus a per-image random perturbation ``U(-1, 1) / H`` of every grid point and *keep their labels*, so
the network must learn the exact warp rather than "any warp".  Their indices are recorded in
``PoisonedSet.info["noise_indices"]`` (they are not in the poisoned mask: they carry no backdoor).

Defaults (official VinAI code, copied by BackdoorBench): ``k=4, s=0.5, grid_rescale=1``, poison rate
0.1, ``cross_ratio=2``, target 0.  Where we differ from the official code: it poisons each batch on
the fly (fresh noise-mode perturbations every step, rows chosen per batch); we poison the training
set once, statically, so the victim receives a fixed set of image files (quantised to uint8).  The
official recipe also trains for 1,000 epochs with crop + rotation augmentation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from backdoorkit.attacks import register_attack
from backdoorkit.attacks.base import CHUNK, Attack, AttackParams, PoisonedSet
from backdoorkit.data.imageset import ImageSet, quantize, to_pixels


class WaNetParams(AttackParams):
    k: int = Field(4, ge=2, description="size of the random control grid")
    s: float = Field(0.5, ge=0.0, description="warping strength")
    grid_rescale: float = Field(1.0, gt=0.0, description="scale of the sampling grid")
    cross_ratio: float = Field(2.0, ge=0.0, description="noise-mode rows per poisoned row")
    pattern_seed: int = Field(0, ge=0, description="seed of the warping field")


def identity_grid(h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[1, H, W, 2]`` sampling grid (x, y order) that leaves an image unchanged."""
    ys = torch.linspace(-1.0, 1.0, h, device=device)
    xs = torch.linspace(-1.0, 1.0, w, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1).unsqueeze(0)


def warp_field(k: int, h: int, w: int, seed: int) -> torch.Tensor:
    """The normalised random field ``[1, H, W, 2]`` (mean absolute control value 1)."""
    gen = torch.Generator().manual_seed(seed)
    ctrl = torch.rand(1, 2, k, k, generator=gen) * 2 - 1
    ctrl = ctrl / ctrl.abs().mean()
    field = F.interpolate(ctrl, size=(h, w), mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1).contiguous()


@register_attack
class WaNet(Attack):
    """WaNet: a fixed smooth warp of the whole image, with noise-mode rows, dirty label."""

    name = "wanet"
    paper = "Nguyen and Tran, WaNet - Imperceptible Warping-based Backdoor Attack, ICLR 2021"
    Params = WaNetParams
    default_rate = 0.1

    params: WaNetParams

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self._grids: dict[tuple[int, int, str], torch.Tensor] = {}

    def grid(self, h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The backdoor sampling grid ``[1, H, W, 2]`` (cached per size and device)."""
        dev = torch.device(device)
        key = (h, w, str(dev))
        if key not in self._grids:
            p = self.params
            field = warp_field(p.k, h, w, p.pattern_seed)
            g = (identity_grid(h, w) + p.s * field / h) * p.grid_rescale
            self._grids[key] = g.clamp(-1.0, 1.0).to(dev)
        return self._grids[key]

    def warp(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Resample ``x`` ``[B, C, H, W]`` at ``grid`` (``[1 or B, H, W, 2]``)."""
        g = grid.expand(x.shape[0], -1, -1, -1) if grid.shape[0] == 1 else grid
        return F.grid_sample(x, g.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        return self.warp(x, self.grid(h, w, x.device))

    def noise_images(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Noise mode: the backdoor warp plus a random per-image grid perturbation (``gen`` on CPU)."""
        b, h, w = x.shape[0], int(x.shape[-2]), int(x.shape[-1])
        jitter = (torch.rand(b, h, w, 2, generator=gen) * 2 - 1).to(x.device)
        grid = (self.grid(h, w, x.device) + jitter / h).clamp(-1.0, 1.0)
        return self.warp(x, grid)

    def finish_poison(self, poisoned: PoisonedSet, clean: ImageSet, seed: int) -> PoisonedSet:
        """Add the noise-mode rows (warp + random jitter, labels kept), disjoint from the poisoned rows."""
        free = (~poisoned.mask).nonzero().flatten()
        want = round(self.params.cross_ratio * poisoned.count)
        n = min(want, len(free))
        gen = torch.Generator().manual_seed(seed + 1)  # independent of the row choice made with ``seed``
        noise_idx = torch.sort(free[torch.randperm(len(free), generator=gen)[:n]]).values
        x = poisoned.data.x.clone()
        dev_idx = noise_idx.to(x.device)
        for start in range(0, n, CHUNK):
            part = dev_idx[start : start + CHUNK]
            x[part] = quantize(self.noise_images(to_pixels(clean.x[part]), gen))
        info = {**poisoned.info, "noise_indices": noise_idx.tolist(), "noise_count": n}
        if n < want:
            info["noise_capped"] = f"cross_ratio asks for {want} noise-mode rows but only {n} rows are free"
        data = poisoned.data.with_data(x)
        return PoisonedSet(data, poisoned.mask, poisoned.attack, poisoned.params, info)
