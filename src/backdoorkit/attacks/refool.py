"""Refool (Liu, Ma, Bailey and Lu, "Reflection Backdoor: A Natural Backdoor Attack on Deep Neural
Networks", ECCV 2020): the trigger is a reflection - another image seen through glass - blended into
the picture; clean label by default.

``x' = clip(alpha_t * x + (1 - alpha_t) * R)`` with ``1 - alpha_t ~ U(reflection_weight)`` (default
``U(0.05, 0.45)``, i.e. ``alpha_t`` in 0.55-0.95), where ``R`` is made from a reflection image ``r``:

* ghost model (probability ``ghost_rate``, default 0.49): ``R = (1 - g) r + g shift(r)``, a copy of
  ``r`` shifted right and down by ``U{3..8}`` pixels each (``ghost_offset``, zero fill), with ghost
  weight ``g ~ U(0.15, 0.5)`` (``ghost_alpha``);
* focal-blur model otherwise: ``R = gaussian_blur(r)`` with ``sigma ~ U(1, 5)`` (``blur_sigma``,
  ``kornia.filters.gaussian_blur2d``, reflect border).

Reflection images: ``n_reflections`` (default 200) images chosen with a generator seeded with the
poisoning seed.  By default they are held-out training images of the classes other than the target
(all classes in all-to-all mode); those rows are never poisoned (``PoisonedSet.info`` lists them as
``reflection_rows``).  ``reflection_source`` names another dataset (registered name or path, its
training split) instead; its images are converted to the channel count (luminance or repetition)
and resized (bilinear, antialiased) to the image size.

Which reflection, model and weights an image gets: for a batch of ``B`` images, one vector of ``B``
values per random quantity (reflection index, ghost or blur, offsets, weights) is drawn from a CPU
generator seeded with a seed (``seed + 2`` when poisoning, ``test_seed`` for ``apply``) mixed with a
checksum of the batch's pixels (quantised to grey levels); image ``i`` takes the ``i``-th values.
``apply`` is therefore deterministic for a given batch (the same batch always gets the same
reflections, in float or uint8) and different batches get different draws; everything is computed
with batched tensor operations.

Label mode: clean by default (target-class images are poisoned, rate 0.1 of the whole set capped at
the target class, as for SIG); ``dirty=True`` poisons non-target images and relabels them, as
BackdoorBench does (then all-to-all is allowed too).  ``label_mode`` therefore depends on the
instance (the registry records the class default, ``clean``).

Defaults: ``reflection_weight=(0.05, 0.45)``, ``ghost_rate=0.49``, ``ghost_offset=(3, 8)``,
``ghost_alpha=(0.15, 0.5)``, ``blur_sigma=(1, 5)``, ``n_reflections=200``, clean label, poison rate
0.1 (capped at the target class), target 0.

Blend (``blend``): ``"gamma"`` (default, the official ``blend_images``) works in gamma-2.2 space,
``t = x^2.2``, ``r = refl^2.2``:

* ghost: ghost weight ``g = |s - U(ghost_alpha)|`` with ``s`` a fair coin (so ``g`` is in 0.15-0.5 or
  0.5-0.85), ``R = g r + (1 - g) shift(r)``, ``x' = ((1 - alpha_t) R + alpha_t t)^(1/2.2)``;
* focal blur: ``R = blur(r)`` (``sigma ~ U(blur_sigma)``), the official overflow adjustment (per
  channel, the mean of ``R + t`` over the pixels above 1, minus 1, times ``1.08 + U(0, 0.1)``, is
  taken off ``R``, then ``R`` is clipped to [0, 1]), a centred Gaussian vignette (``exp(-(u^2 + v^2) / 4)``
  over ``u, v`` in [-3, 3], the official kernel for images below 550 px) times ``1 - alpha_t / 2``:
  ``x' = (vignette R + alpha_t t)^(1/2.2)``;

clipped to [0, 1].  ``"linear"``: our earlier blend in pixel values, ``x' = alpha_t x + (1 - alpha_t) R``
(no gamma, no overflow adjustment, no vignette).  ``alpha_t``: ``None`` draws ``1 - U(reflection_weight)``
per image (the official range 0.55-0.95), except in the dirty-label variant, where it is 0.4 as in
BackdoorBench (its Refool is dirty label with ``alpha_t`` 0.4: clean-label Refool is known not to
reach a high ASR); a number fixes it.

Where we differ from the official code (DreamtaleCore/Refool): the reflections come from a local
image set instead of PascalVOC, candidates are not filtered by SSIM (0.7-0.85) and there is no
reflection-selection stage; the official code first resizes both images to a longest side of 560 px,
so its ghost offsets (3-8 px) and blur sigmas (1-5 px) are in those pixels, whereas ours are in the
image's own pixels; the blur kernel has one size per batch (``2 ceil(2 sigma_max) + 1``, capped at the
image) instead of one per sigma.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from backdoorkit.attacks import register_attack
from backdoorkit.attacks.base import Attack, AttackParams, LabelModeSwitch, PoisonedSet
from backdoorkit.data.imageset import ImageSet, to_pixels
from backdoorkit.errors import ConfigError

LUMA = (0.299, 0.587, 0.114)
GAMMA = 2.2
DIRTY_ALPHA_T = 0.4
"""BackdoorBench's transmission weight for its dirty-label Refool."""


class RefoolParams(AttackParams):
    dirty: bool = Field(False, description="dirty-label variant (relabel non-target images)")
    n_reflections: int = Field(200, ge=1, description="reflection images to draw from")
    reflection_source: str | None = Field(
        None, description="dataset (name or path) of the reflections; None: held-out training rows"
    )
    reflection_weight: tuple[float, float] = Field((0.05, 0.45), description="range of 1 - alpha_t")
    ghost_rate: float = Field(0.49, ge=0.0, le=1.0, description="probability of the ghost model")
    ghost_offset: tuple[int, int] = Field((3, 8), description="range of the ghost shift in pixels")
    ghost_alpha: tuple[float, float] = Field((0.15, 0.5), description="range of the ghost copy's weight")
    blur_sigma: tuple[float, float] = Field((1.0, 5.0), description="range of the focal-blur sigma in pixels")
    test_seed: int = Field(0, ge=0, description="seed of the test-time reflection draws")
    blend: Literal["gamma", "linear"] = Field("gamma", description="official gamma-2.2 blend or linear")
    alpha_t: float | None = Field(
        None, ge=0.0, le=1.0, description="transmission weight; None: drawn (clean) or 0.4 (dirty)"
    )

    @model_validator(mode="after")
    def _ranges(self) -> RefoolParams:
        for name, lo_bound, hi_bound in (
            ("reflection_weight", 0.0, 1.0),
            ("ghost_alpha", 0.0, 1.0),
            ("blur_sigma", 1e-3, 64.0),
            ("ghost_offset", 0, 1024),
        ):
            lo, hi = getattr(self, name)
            if not lo_bound <= lo <= hi <= hi_bound:
                raise ValueError(f"{name} must be (low, high) with {lo_bound} <= low <= high <= {hi_bound}")
        return self


def uniform(n: int, bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def batch_generator(x: torch.Tensor, seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` and a checksum of the batch's grey levels."""
    checksum = int(torch.round(x.detach().double().clamp(0, 1) * 255).sum().item())
    return torch.Generator().manual_seed((seed * 1_000_003 + checksum) % (2**63 - 1))


def match_images(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Float images ``[N, C', H', W']`` -> ``[N, C, H, W]`` (luminance / repetition, bilinear resize)."""
    c, h, w = shape
    if x.shape[1] != c:
        if c == 1:
            x = (x * torch.tensor(LUMA, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            x = x.expand(-1, c, -1, -1)
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0).contiguous()


@register_attack
class Refool(Attack):
    """Refool: reflection triggers (ghost or focal blur) from another image set, clean label by default."""

    name = "refool"
    paper = "Liu et al., Reflection Backdoor: A Natural Backdoor Attack on Deep Neural Networks, ECCV 2020"
    label_mode = LabelModeSwitch("dirty", default="clean")  # type: ignore[assignment]
    Params = RefoolParams
    default_rate = 0.1

    params: RefoolParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._pool: torch.Tensor | None = None
        self._pool_rows: torch.Tensor | None = None
        self._pool_on: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ reflection images
    def _setup(self, train: ImageSet, *, seed: int, **kwargs: Any) -> None:
        p = self.params
        gen = torch.Generator().manual_seed(seed + 1)
        if p.reflection_source is None:
            y = train.y.cpu()
            other = torch.arange(len(y)) if self.all2all else (y != self.target).nonzero().flatten()
            if len(other) == 0:
                raise ConfigError("refool: no images of other classes to take reflections from")
            rows = torch.sort(other[torch.randperm(len(other), generator=gen)[: p.n_reflections]]).values
            self._pool_rows = rows
            self._pool = to_pixels(train.x[rows.to(train.device)]).cpu()
        else:
            from backdoorkit.data import load_dataset

            source = load_dataset(p.reflection_source, "train")
            rows = torch.randperm(len(source), generator=gen)[: p.n_reflections]
            self._pool_rows = None
            self._pool = match_images(to_pixels(source.x[rows.to(source.device)]).cpu(), train.image_shape)
        self._pool_on = {}

    def reflections(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The reflection images ``[n, C, H, W]`` on ``device``."""
        self._require_ready()
        assert self._pool is not None
        key = str(torch.device(device))
        if key not in self._pool_on:
            self._pool_on[key] = self._pool.to(device)
        return self._pool_on[key]

    def candidates(self, train: ImageSet) -> torch.Tensor:
        """The base choice minus the rows used as reflections (those stay clean)."""
        cand = super().candidates(train)
        if self._pool_rows is not None and len(cand):
            cand = cand[~torch.isin(cand, self._pool_rows)]
        return cand

    # ------------------------------------------------------------------ trigger
    def transmission(self, b: int, gen: torch.Generator) -> torch.Tensor:
        """``alpha_t`` for ``b`` images ``[b]``: fixed, 0.4 (dirty-label default) or ``1 - U(weight)``."""
        p = self.params
        drawn = 1.0 - uniform(b, p.reflection_weight, gen)  # always drawn: the stream stays aligned
        if p.alpha_t is not None:
            return torch.full((b,), float(p.alpha_t))
        if p.dirty:
            return torch.full((b,), DIRTY_ALPHA_T)
        return drawn

    def reflect(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Blend a drawn reflection into every image of ``x`` (draws from the CPU generator ``gen``)."""
        import kornia

        p = self.params
        b, dev = x.shape[0], x.device
        gamma = p.blend == "gamma"
        pool = self.reflections(dev)
        pick = torch.randint(len(pool), (b,), generator=gen)
        ghost = torch.rand(b, generator=gen) < p.ghost_rate
        offset = torch.randint(p.ghost_offset[0], p.ghost_offset[1] + 1, (b, 2), generator=gen).float()
        g = uniform(b, p.ghost_alpha, gen)
        sigma = uniform(b, p.blur_sigma, gen)
        alpha_t = self.transmission(b, gen).to(dev).view(b, 1, 1, 1)
        if gamma:
            switch = (torch.rand(b, generator=gen) > 0.5).float()
            g = (switch - g).abs()
            att = (1.08 + torch.rand(b, generator=gen) / 10.0).to(dev).view(b, 1, 1, 1)
        r = pool[pick.to(dev)]
        t = x
        if gamma:
            r, t = r.clamp(0, 1).pow(GAMMA), x.clamp(0, 1).pow(GAMMA)
        out = torch.empty_like(x)
        gi, bi = ghost.nonzero().flatten().to(dev), (~ghost).nonzero().flatten().to(dev)
        if len(gi):
            shifted = kornia.geometry.transform.translate(r[gi], offset[ghost].to(dev), padding_mode="zeros")
            gw = g[ghost].to(dev).view(-1, 1, 1, 1)
            # the official ghost puts g on the unshifted copy; the linear blend on the shifted one
            refl = gw * r[gi] + (1 - gw) * shifted if gamma else (1 - gw) * r[gi] + gw * shifted
            a = alpha_t[gi]
            out[gi] = (1 - a) * refl + a * t[gi]
        if len(bi):
            h, w = int(x.shape[-2]), int(x.shape[-1])
            reach = 2 if gamma else 3  # the official kernel spans 2 sigma each side
            ks = min(2 * math.ceil(reach * p.blur_sigma[1]) + 1, 2 * ((min(h, w) - 1) // 2) + 1)
            s = sigma[~ghost].to(dev)
            blur = kornia.filters.gaussian_blur2d(r[bi], (ks, ks), torch.stack((s, s), dim=1))
            a = alpha_t[bi]
            if gamma:
                out[bi] = self._focal_gamma(blur, t[bi], a, att[bi])
            else:
                out[bi] = (1 - a) * blur + a * t[bi]
        if gamma:
            out = out.clamp(0.0, 1.0).pow(1.0 / GAMMA)
        return out.clamp(0.0, 1.0)

    @staticmethod
    def _focal_gamma(
        blur: torch.Tensor, t: torch.Tensor, alpha_t: torch.Tensor, att: torch.Tensor
    ) -> torch.Tensor:
        """The official focal-blur blend in gamma space (overflow adjustment, vignette); ``[B, C, H, W]``."""
        over = blur + t
        hot = (over > 1).float()
        mean = (over * hot).sum(dim=(2, 3), keepdim=True) / (hot.sum(dim=(2, 3), keepdim=True) + 1e-6)
        blur = (blur - (mean.clamp(min=1.0) - 1) * att).clamp(0.0, 1.0)
        h, w = int(t.shape[-2]), int(t.shape[-1])
        u = torch.linspace(-3.0, 3.0, h, device=t.device).view(h, 1)
        v = torch.linspace(-3.0, 3.0, w, device=t.device).view(1, w)
        vignette = torch.exp(-(u**2 + v**2) / 4.0).view(1, 1, h, w)
        return blur * vignette * (1 - alpha_t / 2) + alpha_t * t

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.reflect(x, batch_generator(x, self.params.test_seed))

    def poison_images(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        return self.reflect(x, batch_generator(x, seed + 2))

    def finish_poison(self, poisoned: PoisonedSet, clean: ImageSet, seed: int) -> PoisonedSet:
        """Record where the reflections came from."""
        p = self.params
        info: dict[str, Any] = {"reflection_source": p.reflection_source or f"{clean.name} (held-out rows)"}
        if self._pool_rows is not None:
            info["reflection_rows"] = self._pool_rows.tolist()
        poisoned.info.update(info)
        return poisoned
