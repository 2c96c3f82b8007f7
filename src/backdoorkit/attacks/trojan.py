"""Trojan-SQ and Trojan-WM (Liu et al., "Trojaning Attack on Neural Networks", NDSS 2018), in the
form used by I-BAU and Trap-and-Replace (triggers from Zeng et al.'s frequency-backdoor repository):
a trigger whose pixels inside a fixed mask are optimised to excite chosen neurons of the attacker's
clean model, added to the image and clipped, dirty label.

* ``trojan_sq``: a 9x9 square at rows/cols 21-29 on 32x32 images (scaled with the image size:
  rows ``round(21 H/32) .. round(30 H/32) - 1``, the same for columns).
* ``trojan_wm``: a fixed, procedurally drawn watermark glyph, a ring with a cross inside (an "⊗",
  stroke about 2-3 px), inside rows/cols 0-29: 296 pixels on 32x32 (I-BAU's watermark has 321).
  It is drawn on a 32x32 reference grid and sampled at pixel centres for other sizes.

Trigger generation (:meth:`_Trojan._setup`):

1. Neurons: the ``n_neurons`` (default 1) units of the penultimate layer (``model.features(x)``)
   with the largest summed absolute outgoing weights into the classification head
   (``sum_k |W_head[k, j]|``), i.e. the units the output depends on most.  The original picks the
   neuron of an internal layer most strongly connected to the *previous* layer; our models'
   penultimate units are pooled convolution channels, so we rank them by their head weights instead.
2. Optimisation: the trigger values (all channels, inside the mask only) start uniform at random
   (seeded) and follow ``steps`` (default 500) Adam steps (lr 0.1), clipped to ``[0, 1]`` after
   each, maximising the mean activation of the chosen units.  The canvas is ``blank`` (a black image,
   as the original optimises on a blank canvas; default) or ``data`` (``n_images`` seeded training
   images, the mean over the batch).  The original pushes the activation towards a large target value
   with an MSE loss; maximising the activation directly is the same direction without that constant.

Application (as I-BAU / T&R apply their PNG triggers): ``x' = clip(x + trigger * mask, 0, 1)``, in
training and at test time.  Defaults: rate 0.1, target 0, all-to-one (all-to-all allowed).

The attacker model is the one passed as ``poison(train, seed=..., model=m)``; without one a clean
ResNet-18 (width 16, dataset recipe) is trained.  Triggers (and the self-trained model) are cached by
parameters + seed + data fingerprint + model identity.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from backdoorkit.attacks import register_attack
from backdoorkit.attacks._model_based import ModelBasedAttack, ModelBasedParams, count_call, model_device
from backdoorkit.data.imageset import ImageSet
from backdoorkit.device import eval_mode
from backdoorkit.errors import ConfigError

REF = 32  # the reference image size the masks are defined on
TRIGGER_KIND = "trojan_triggers"


class TrojanParams(ModelBasedParams):
    n_neurons: int = Field(1, ge=1, description="penultimate units the trigger excites")
    steps: int = Field(500, ge=1, description="Adam steps on the trigger pixels")
    lr: float = Field(0.1, gt=0, description="Adam learning rate (pixels in [0, 1])")
    canvas: Literal["blank", "data"] = Field("blank", description="black image or training images")
    n_images: int = Field(64, ge=1, description="training images for canvas='data'")


def _ref_coords(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates of an ``h x w`` image on the 32x32 reference grid, as [H,1] and [1,W]."""
    r = (torch.arange(h, dtype=torch.float32) + 0.5) * REF / h - 0.5
    c = (torch.arange(w, dtype=torch.float32) + 0.5) * REF / w - 0.5
    return r[:, None], c[None, :]


def square_mask(h: int, w: int) -> torch.Tensor:
    """Bool ``[H, W]``: the Trojan-SQ square, rows/cols 21-29 on 32x32 (scaled for other sizes)."""
    r0, r1 = round(21 * h / REF), round(30 * h / REF)
    c0, c1 = round(21 * w / REF), round(30 * w / REF)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)] = True
    return mask


def watermark_mask(h: int, w: int) -> torch.Tensor:
    """Bool ``[H, W]``: the Trojan-WM glyph, a ring (radius 12.5-14.6 around (14.5, 14.5)) with a
    3-px cross inside, within rows/cols 0-29 on 32x32 (296 pixels); sampled at pixel centres."""
    r, c = _ref_coords(h, w)
    centre, outer, inner = 14.5, 14.6, 12.5
    dist = ((r - centre) ** 2 + (c - centre) ** 2).sqrt()
    ring = (dist >= inner) & (dist <= outer)
    cross = (((r - c).abs() <= 1.0) | ((r + c - 2 * centre).abs() <= 1.0)) & (dist < inner)
    return ring | cross


def select_neurons(model: nn.Module, n: int, name: str) -> torch.Tensor:
    """Indices of the ``n`` penultimate units with the largest summed |outgoing head weight|."""
    head = model.get_submodule(getattr(model, "head_name", "fc")) if hasattr(model, "get_submodule") else None
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"{name}: the attacker model needs a linear head ('fc') to choose neurons")
    if n > head.in_features:
        raise ConfigError(f"{name}: n_neurons {n} exceeds the {head.in_features} penultimate units")
    score = head.weight.detach().abs().sum(0)
    return torch.sort(torch.topk(score, n).indices).values


def optimise_trigger(
    model: nn.Module,
    canvas: torch.Tensor,
    mask: torch.Tensor,
    neurons: torch.Tensor,
    *,
    steps: int,
    lr: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Adam ascent on the trigger pixels inside ``mask`` (``[1, 1, H, W]``) of the mean activation of
    ``neurons`` of ``model.features`` on ``clip(canvas + trigger * mask)``; returns ``trigger * mask``
    (``[1, C, H, W]``, values in ``[0, 1]``)."""
    count_call("trojan_trigger")
    device = canvas.device
    shape = (1, *canvas.shape[1:])
    trigger = torch.rand(shape, generator=generator).to(device).requires_grad_(True)
    opt = torch.optim.Adam([trigger], lr=lr)
    neurons = neurons.to(device)
    with torch.enable_grad(), eval_mode(model):
        for _ in range(steps):
            x = (canvas + trigger * mask).clamp(0, 1)
            act = model.features(x)[:, neurons]  # type: ignore[operator]
            loss = -act.float().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                trigger.clamp_(0, 1)
    return (trigger.detach() * mask).contiguous()


class _Trojan(ModelBasedAttack):
    """Common part of Trojan-SQ and Trojan-WM (the subclasses only choose the mask)."""

    paper = "Liu et al., Trojaning Attack on Neural Networks, NDSS 2018"
    Params = TrojanParams
    default_rate = 0.1
    compute_fields = ("n_neurons", "steps", "lr", "canvas", "n_images")
    needs_features = True
    mask_name: ClassVar[str] = ""

    params: TrojanParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.trigger: torch.Tensor | None = None  # [1, C, H, W], zero outside the mask
        self.neurons: list[int] = []

    def mask(self, h: int, w: int) -> torch.Tensor:
        raise NotImplementedError

    def validate_shape(self, shape: tuple[int, int, int]) -> None:
        _, h, w = shape
        if h < 8 or w < 8:
            raise ConfigError(f"{self.name}: images of {h}x{w} are too small for the trigger mask (min 8x8)")

    def _setup(self, train: ImageSet, *, seed: int, **kwargs: Any) -> None:
        c, h, w = train.image_shape
        key = self.compute_key(seed, self.mask_name, [c, h, w])
        found = self.cache.get_or_compute_tensors(
            TRIGGER_KIND,
            key,
            lambda: self._compute_trigger(train, seed),
            meta={"attack": self.name, "seed": seed, "model": self.model_ident},
            valid=lambda hit: {"trigger", "neurons"} <= set(hit),
        )
        self.trigger = found["trigger"]
        self.neurons = found["neurons"].tolist()

    def _compute_trigger(self, train: ImageSet, seed: int) -> dict[str, torch.Tensor]:
        """``{"trigger": [1, C, H, W], "neurons": [k]}`` optimised on the attacker model (CPU)."""
        c, h, w = train.image_shape
        model = self.attacker()
        device = model_device(model)
        neurons = select_neurons(model, self.params.n_neurons, self.name)
        gen = torch.Generator().manual_seed(seed)
        if self.params.canvas == "blank":
            canvas = torch.zeros(1, c, h, w, device=device)
        else:
            pick = torch.randperm(len(train), generator=gen)[: self.params.n_images]
            canvas = train.pixels(pick.to(train.device)).to(device)
        mask = self.mask(h, w).to(device=device, dtype=torch.float32)[None, None]
        trigger = optimise_trigger(
            model, canvas, mask, neurons, steps=self.params.steps, lr=self.params.lr, generator=gen
        ).cpu()
        return {"trigger": trigger, "neurons": neurons.cpu()}

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        self._require_ready()
        assert self.trigger is not None
        if tuple(x.shape[1:]) != tuple(self.trigger.shape[1:]):
            raise ConfigError(
                f"{self.name}: the trigger was made for {tuple(self.trigger.shape[1:])} images, "
                f"got {tuple(x.shape[1:])}"
            )
        return (x + self.trigger.to(device=x.device, dtype=x.dtype)).clamp(0, 1)


@register_attack
class TrojanSQ(_Trojan):
    """Trojan-SQ: neuron-exciting trigger in a 9x9 square (rows/cols 21-29), additive, dirty label."""

    name = "trojan_sq"
    mask_name = "square"

    def mask(self, h: int, w: int) -> torch.Tensor:
        return square_mask(h, w)


@register_attack
class TrojanWM(_Trojan):
    """Trojan-WM: neuron-exciting trigger in a watermark-glyph mask, additive, dirty label."""

    name = "trojan_wm"
    mask_name = "watermark"

    def mask(self, h: int, w: int) -> torch.Tensor:
        return watermark_mask(h, w)
