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

On-the-fly poisoning (``poisoning="on_the_fly"``, as the VinAI code and BackdoorBench train):
:meth:`WaNet.poison` leaves the training set clean (an empty mask; ``info["on_the_fly"]``), and the
attack-owned victim training (:meth:`WaNet.train_victim`) poisons every batch afresh: a random
``rate`` fraction of its rows is warped and relabelled, a further ``cross_ratio * rate`` fraction gets
the noise-mode warp with labels kept, and only then is the batch augmented (the VinAI order), so each
image is seen clean and warped over training.  The rows are drawn from the training seed (``fit``
seeds torch's generator), so a run is reproducible.  The noise-mode jitter (``U(-1, 1) / H`` per grid
point) is about three times the backdoor warp itself (``s / H`` times a unit-mean field); the SSFT
victims ran without noise mode (their preset sets ``cross_ratio=0``).

Defaults (official VinAI code, copied by BackdoorBench): ``k=4, s=0.5, grid_rescale=1``, poison rate
0.1, ``cross_ratio=2``, target 0, ``poisoning="static"``.  Where we differ from the official code: by
default we poison the training set once, statically, so the victim receives a fixed set of image
files (quantised to uint8); ``poisoning="on_the_fly"`` is the official per-batch scheme (float warps,
not quantised).  The official recipe also trains for 1,000 epochs with crop + rotation augmentation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from backdoorkit.attacks import register_attack
from backdoorkit.attacks.base import CHUNK, Attack, AttackParams, PoisonedSet
from backdoorkit.data.imageset import ImageSet, quantize, to_pixels

if TYPE_CHECKING:
    from backdoorkit.train import Batch, TrainConfig


class WaNetParams(AttackParams):
    k: int = Field(4, ge=2, description="size of the random control grid")
    s: float = Field(0.5, ge=0.0, description="warping strength")
    grid_rescale: float = Field(1.0, gt=0.0, description="scale of the sampling grid")
    cross_ratio: float = Field(2.0, ge=0.0, description="noise-mode rows per poisoned row")
    pattern_seed: int = Field(0, ge=0, description="seed of the warping field")
    poisoning: Literal["static", "on_the_fly"] = Field(
        "static", description="poison the set once, or fresh rows of every batch during victim training"
    )


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

    def noise_images(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Noise mode: the backdoor warp plus a random per-image grid perturbation (drawn from the CPU
        generator ``gen``, or from torch's default generator on ``x``'s device when ``None``)."""
        b, h, w = x.shape[0], int(x.shape[-2]), int(x.shape[-1])
        if gen is None:
            jitter = torch.rand(b, h, w, 2, device=x.device) * 2 - 1
        else:
            jitter = (torch.rand(b, h, w, 2, generator=gen) * 2 - 1).to(x.device)
        grid = (self.grid(h, w, x.device) + jitter / h).clamp(-1.0, 1.0)
        return self.warp(x, grid)

    @property
    def on_the_fly(self) -> bool:
        return self.params.poisoning == "on_the_fly"

    def select(self, train: ImageSet, seed: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """On the fly: no fixed rows (every batch draws its own); else the base choice."""
        if self.on_the_fly:
            return torch.zeros(0, dtype=torch.long), {"on_the_fly": True, "rate": self.rate}
        return super().select(train, seed)

    def batch_poisoner(self, data: ImageSet, augment: nn.Module | None) -> Callable[[Batch], Batch]:
        """The per-batch poisoning of on-the-fly training: warp + relabel a ``rate`` fraction of the
        batch, noise-mode warp a ``cross_ratio * rate`` fraction (labels kept), then ``augment``."""
        from backdoorkit.train import Batch

        frac = self.rate / max(len(data), 1) if isinstance(self.rate, int) else float(self.rate)
        cross = self.params.cross_ratio

        def poison(batch: Batch) -> Batch:
            x, y = batch.x, batch.y
            n = x.shape[0]
            n_bd = min(n, round(frac * n))
            n_cross = min(n - n_bd, round(cross * frac * n))
            eligible = torch.ones(n, dtype=torch.bool, device=x.device)
            if not self.all2all:
                eligible = y != self.target  # dirty label: the target class carries no backdoor row
            order = torch.argsort(torch.rand(n, device=x.device) + (~eligible).float())
            bd, rest = order[:n_bd], order[n_bd:]
            bd = bd[eligible[bd]]
            cr = rest[torch.randperm(len(rest), device=x.device)[:n_cross]]
            x, y = x.clone(), y.clone()
            if len(bd):
                x[bd] = self.apply(x[bd])
                y[bd] = self.target_labels(y[bd])
            if len(cr):
                x[cr] = self.noise_images(x[cr])
            if augment is not None:
                x = augment(x)
            return Batch(x=x, y=y, idx=batch.idx, step=batch.step, epoch=batch.epoch)

        return poison

    def train_victim(
        self, model_factory: Callable[[], nn.Module], poisoned: PoisonedSet, config: TrainConfig
    ) -> nn.Module:
        """Static poisoning: the base training.  On the fly: :func:`backdoorkit.train.fit` on the clean
        set with :meth:`batch_poisoner` in the loss (the dataset's augmentation after poisoning)."""
        if not self.on_the_fly:
            return super().train_victim(model_factory, poisoned, config)
        from backdoorkit.data.batching import standard_augmentation
        from backdoorkit.train import default_loss, fit

        data = poisoned.data
        self.setup(data, seed=config.seed)
        augment = standard_augmentation(data) if config.augment else None
        poison, base = self.batch_poisoner(data, augment), default_loss(config.label_smoothing)

        def loss_fn(model: nn.Module, batch: Batch) -> Any:
            return base(model, poison(batch))

        model = self.prepare_model(model_factory())
        fit(model, data, config, loss_fn=loss_fn, augmentation=None)
        return model.eval()

    def finish_poison(self, poisoned: PoisonedSet, clean: ImageSet, seed: int) -> PoisonedSet:
        """Add the noise-mode rows (warp + random jitter, labels kept), disjoint from the poisoned rows."""
        if self.on_the_fly:
            return poisoned
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
