"""Smooth / low-frequency trigger (Zeng, Park, Mozaffari, Jia & Jia, "Rethinking the Backdoor Attacks'
Triggers: A Frequency Perspective", ICCV 2021): a universal adversarial perturbation of the attacker's
clean model, kept low-frequency by a Gaussian low-pass filter, added to the image; dirty label.

Trigger generation (:meth:`Smooth._setup`):

1. ``n_images`` (default 100) training images drawn at random (seeded).
2. One perturbation ``u`` (``[C, H, W]``, zero start) optimised by ``steps`` (default 100) Adam
   steps (lr 0.01) through the low-pass filter ``g = gaussian_blur(u)`` (sigma 6 on 32x32, scaled
   with the image size; kernel ``2 ceil(3 sigma) + 1`` px, at most ``2 H - 1``, reflect border;
   kornia), minimising the cross-entropy of ``clip(x + g)`` towards the ``target``, with ``u``
   projected to ``||u||_inf <= max_amplitude`` after each step.
3. The filtered pattern ``g`` is min-max rescaled into ``[0, max_amplitude]`` (default 0.2, about
   51/255, the maximum of Trap-and-Replace's ``smooth_cifar10.png``).

Application: ``x' = clip(x + pattern, 0, 1)``; with ``renormalise=True`` each image is then min-max
re-normalised to ``[0, 1]``, as Trap-and-Replace does (default False, as the official repo).
Defaults: rate 0.1, target 0, all-to-one (all-to-all allowed: the pattern is then optimised
untargeted).

Differences from the official code (YiZeng623/frequency-backdoor): it builds the universal
perturbation with DeepFool iterations (overshoot 0.02) until 20 % of the images are fooled
(``delta = 0.8``), untargeted, and the dominant resulting label becomes the target.  We use a fixed
number of gradient steps, and by default optimise *towards the user's target* (targeted);
``untargeted=True`` maximises the cross-entropy of the true labels instead, as the original, and the
dominant label the pattern pushes the attacker model to is recorded as ``info["uap_label"]``.

The attacker model is the one passed as ``poison(train, seed=..., model=m)``; without one a clean
ResNet-18 (width 16, dataset recipe) is trained.  Patterns are cached by parameters + seed + data
fingerprint + model identity.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from backdoorkit.attacks import register_attack
from backdoorkit.attacks._model_based import ModelBasedAttack, ModelBasedParams, count_call, model_device
from backdoorkit.attacks.base import PoisonedSet
from backdoorkit.data.imageset import ImageSet
from backdoorkit.device import eval_mode
from backdoorkit.errors import ConfigError

PATTERN_KIND = "smooth_patterns"
REF = 32


class SmoothParams(ModelBasedParams):
    sigma: float = Field(6.0, gt=0, description="Gaussian low-pass sigma on 32x32 images (scaled with size)")
    n_images: int = Field(100, ge=1, description="training images the universal perturbation is fitted on")
    steps: int = Field(100, ge=1, description="Adam steps")
    lr: float = Field(0.01, gt=0, description="Adam learning rate")
    untargeted: bool = Field(False, description="maximise the true labels' loss (the official variant)")
    max_amplitude: float = Field(0.2, gt=0, le=1, description="pattern range [0, max_amplitude]")
    renormalise: bool = Field(False, description="min-max re-normalise each triggered image (T&R)")


def low_pass(u: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``[B, C, H, W]`` with ``sigma`` given for 32x32 images (scaled per axis)."""
    from kornia.filters import gaussian_blur2d

    h, w = u.shape[-2:]
    sh, sw = sigma * h / REF, sigma * w / REF
    kh = min(2 * math.ceil(3 * sh) + 1, 2 * h - 1)
    kw = min(2 * math.ceil(3 * sw) + 1, 2 * w - 1)
    return gaussian_blur2d(u, (kh, kw), (sh, sw), border_type="reflect")


def rescale(pattern: torch.Tensor, amplitude: float) -> torch.Tensor:
    """Min-max rescale the whole pattern into ``[0, amplitude]``."""
    lo, hi = pattern.min(), pattern.max()
    return (pattern - lo) / (hi - lo).clamp_min(1e-12) * amplitude


def smooth_uap(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    sigma: float,
    steps: int,
    lr: float,
    bound: float,
    targeted: bool,
) -> torch.Tensor:
    """The low-pass universal perturbation ``[1, C, H, W]`` (before rescaling) for images ``x``.

    ``targeted``: minimise CE(model(clip(x + g)), y) with ``y`` the target labels; otherwise
    maximise it with ``y`` the true labels.  ``g = low_pass(u)``, ``||u||_inf <= bound``.
    """
    count_call("smooth_uap")
    u = torch.zeros(1, *x.shape[1:], device=x.device, requires_grad=True)
    opt = torch.optim.Adam([u], lr=lr)
    sign = 1.0 if targeted else -1.0
    with torch.enable_grad(), eval_mode(model):
        for _ in range(steps):
            g = low_pass(u, sigma)
            loss = sign * F.cross_entropy(model((x + g).clamp(0, 1)).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                u.clamp_(-bound, bound)
    return low_pass(u.detach(), sigma)


@register_attack
class Smooth(ModelBasedAttack):
    """Smooth: a low-frequency universal adversarial perturbation as an additive trigger, dirty label."""

    name = "smooth"
    paper = "Zeng et al., Rethinking the Backdoor Attacks' Triggers: A Frequency Perspective, ICCV 2021"
    Params = SmoothParams
    default_rate = 0.1
    compute_fields = ("sigma", "n_images", "steps", "lr", "untargeted", "max_amplitude")

    params: SmoothParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.pattern: torch.Tensor | None = None  # [1, C, H, W] in [0, max_amplitude]
        self.uap_label: int | None = None

    @property
    def _untargeted(self) -> bool:
        return self.params.untargeted or self.all2all

    def validate_shape(self, shape: tuple[int, int, int]) -> None:
        _, h, w = shape
        if h < 4 or w < 4:
            raise ConfigError(f"{self.name}: images of {h}x{w} are too small for a low-pass pattern")

    def _setup(self, train: ImageSet, *, seed: int, **kwargs: Any) -> None:
        goal = "untargeted" if self._untargeted else self.target
        key = self.compute_key(seed, goal, list(train.image_shape))
        found = self.cache.get_or_compute_tensors(
            PATTERN_KIND,
            key,
            lambda: self._compute_pattern(train, seed),
            meta={"attack": self.name, "seed": seed, "model": self.model_ident},
            valid=lambda hit: {"pattern", "uap_label"} <= set(hit),
        )
        self.pattern = found["pattern"]
        self.uap_label = int(found["uap_label"])

    def _compute_pattern(self, train: ImageSet, seed: int) -> dict[str, torch.Tensor]:
        """``{"pattern": [1, C, H, W], "uap_label": []}``: the smooth UAP on the attacker model (CPU)
        and the class it sends most of the sampled images to."""
        p = self.params
        model = self.attacker()
        device = model_device(model)
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(train), generator=gen)[: p.n_images].to(train.device)
        x = train.pixels(pick).to(device)
        y = train.y[pick].to(device)
        labels = y if self._untargeted else torch.full_like(y, self.target)
        raw = smooth_uap(
            model,
            x,
            labels,
            sigma=p.sigma,
            steps=p.steps,
            lr=p.lr,
            bound=p.max_amplitude,
            targeted=not self._untargeted,
        )
        pattern = rescale(raw, p.max_amplitude)
        with torch.no_grad(), eval_mode(model):
            pred = model(self._add(x, pattern)).argmax(1)
        uap_label = int(torch.bincount(pred.cpu(), minlength=train.num_classes).argmax())
        return {"pattern": pattern.cpu(), "uap_label": torch.tensor(uap_label)}

    def _add(self, x: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
        out = (x + pattern.to(device=x.device, dtype=x.dtype)).clamp(0, 1)
        if self.params.renormalise:
            lo = out.amin(dim=(1, 2, 3), keepdim=True)
            hi = out.amax(dim=(1, 2, 3), keepdim=True)
            out = (out - lo) / (hi - lo).clamp_min(1e-12)
        return out

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        self._require_ready()
        assert self.pattern is not None
        if tuple(x.shape[1:]) != tuple(self.pattern.shape[1:]):
            raise ConfigError(
                f"{self.name}: the pattern was made for {tuple(self.pattern.shape[1:])} images, "
                f"got {tuple(x.shape[1:])}"
            )
        return self._add(x, self.pattern)

    def finish_poison(self, poisoned: PoisonedSet, clean: ImageSet, seed: int) -> PoisonedSet:
        poisoned.info["uap_label"] = self.uap_label
        return poisoned
