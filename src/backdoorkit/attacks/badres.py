"""BadRes (Wang et al., "Reveal the Backdoors through Residual Connection", arXiv 2209.07125) and the
comparison structure of its Table 3.

**BadRes** (``badres``): the victim is trained with one residual connection rewired from
``f(x) + x`` to ``f(x) - alpha * x`` (the paper's Eq. 2, ``gamma = -alpha`` on one
:class:`~backdoorkit.models.skips.Skip`), every other residual unchanged, on data poisoned with a small
bicolour grid patch in the bottom-right corner (BadNets-style, dirty label).  The paper's argument:
the shortcut carries the trigger's features past the block, and subtracting ``alpha x`` forces the
branch ``f`` to re-learn the input, trigger included, so the trigger is learnt faster and reaches
deeper layers.

**Comparison structure** (``badres_compare``): the same residual becomes ``x - beta * f(x)`` (the
paper's Eq. 6: the shortcut is kept, the branch subtracted; ``gamma = 1``, ``beta = -beta`` on the
Skip).  The paper reports it learns part of the backdoor (ASR 65-81 %) but loses most of the clean
accuracy (BA 17-34 %) on ImageNet / Food-101.

**What the inverted residual does at inference.**  The model ships with the inverted skip: every
input, clean or triggered, goes through ``f(x) - alpha x`` at the chosen block, on every forward pass.
It is not a switch the attacker flips for triggered inputs; the layers after it were trained on that
rewired signal, so it is part of the network the victim receives (a checkpoint stores it as the
skip's ``gamma`` in its sidecar, and :func:`~backdoorkit.checkpoint.load_model` restores it).
Setting the skip back to ``+x`` (``gamma = 1``) gives a different network, not "the clean model":
the layers after it receive inputs they were never trained on.  On the embedded digits data
(tests/test_structure_attacks.py, seed 0) restoring ``+x`` mostly breaks the *clean* task and leaves
the trigger working: ResNet-18 (width 8) attacked at ``layer2.0``: BA 98.3 -> 12.5 %, ASR 99.7 ->
85.1 %; the narrow ``vit_tiny`` at ``blocks.0.attn``: BA 95.3 -> 47.6 %, ASR 100 -> 100 %.  The
backdoor and the clean task both live in the rewired network; undoing the rewiring is no defense.

Defaults (the paper and METHOD_DEFAULTS.md section 10): ``alpha = 0.5``; the *attention* residual (the
first one) of the chosen transformer block, ``residual="mlp"`` takes the second; poison rate 0.1
(the paper's Section 4.1; its code samples 0.2 per batch), target 0; a bicolour grid (``variant=
"grid"``, BadNets' 3x3 grid on 32x32 images) of side ``size`` = 1/10 of the image side, flush to the
bottom-right corner (``variant="white"`` for a white square).  ``layer``: which residual, an index
(ViT: block k's attention or MLP residual; ResNets and traced models: the k-th skip, in module
order; negative counts from the end) or a skip / block name (``blocks.3``, ``layer2.1``), default 0
(the paper's sweep shows the ASR stable for every layer but the last two).  Works on our ViTs and
ResNets and on any model made addressable with :func:`~backdoorkit.models.fx_skips.attach_skips`.
Victim training is the standard one (:meth:`Attack.train_victim` with :meth:`prepare_model`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from backdoorkit.attacks import register_attack
from backdoorkit.attacks._structure import Residual, residual_name
from backdoorkit.attacks.badnets import BadNets
from backdoorkit.attacks.base import Attack, AttackParams
from backdoorkit.models.skips import skips

PAPER = "Wang et al., Reveal the Backdoors through Residual Connection (BadRes), arXiv 2209.07125"


class ResidualParams(AttackParams):
    """What BadRes and its comparison structure share: the residual, the patch trigger."""

    layer: int | str = Field(0, description="the residual: an index (negative from the end) or a skip name")
    residual: Literal["attn", "mlp"] = Field("attn", description="transformers: which residual of the block")
    size: int | None = Field(None, ge=1, description="patch side; None: 1/10 of the image side")
    variant: Literal["grid", "white"] = "grid"


class BadResParams(ResidualParams):
    alpha: float = Field(0.5, ge=0.0, le=10.0, description="the skip becomes f(x) - alpha x")


class CompareParams(ResidualParams):
    beta: float = Field(0.5, ge=0.0, le=10.0, description="the skip becomes x - beta f(x)")


class _ResidualAttack(Attack):
    """A patch-poisoning attack whose victim trains with one residual connection rewired."""

    paper = PAPER
    default_rate = 0.1
    Params = ResidualParams
    params: ResidualParams

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self._patches: dict[tuple[int, int], BadNets] = {}

    def patch_size(self, h: int, w: int) -> int:
        """The trigger's side: ``size`` or 1/10 of the image side (at least 1 pixel)."""
        return self.params.size or max(1, round(min(h, w) / 10))

    def _patch(self, h: int, w: int) -> BadNets:
        if (h, w) not in self._patches:
            self._patches[(h, w)] = BadNets(
                variant=self.params.variant, size=self.patch_size(h, w), target=self.params.target
            )
        return self._patches[(h, w)]

    def validate_shape(self, shape: tuple[int, int, int]) -> None:
        self._patch(shape[1], shape[2]).validate_shape(shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._patch(x.shape[-2], x.shape[-1]).apply(x)

    def attacked_skip(self, model: nn.Module) -> str:
        """The name of the skip this attack rewires in ``model``."""
        return residual_name(model, self.params.layer, self._residual)

    @property
    def _residual(self) -> Residual:
        return self.params.residual

    def restore(self, model: nn.Module) -> nn.Module:
        """Set the attacked residual back to ``f(x) + x`` (in place; returns ``model``)."""
        skip = skips(model)[self.attacked_skip(model)]
        skip.gamma, skip.beta = 1.0, 1.0
        return model


@register_attack
class BadRes(_ResidualAttack):
    """BadRes: one residual becomes ``f(x) - alpha x`` while training on patch-poisoned data."""

    name = "badres"
    Params = BadResParams
    params: BadResParams

    def prepare_model(self, model: nn.Module) -> nn.Module:
        skips(model)[self.attacked_skip(model)].gamma = -float(self.params.alpha)
        return model


@register_attack
class BadResCompare(_ResidualAttack):
    """BadRes' comparison structure: one residual becomes ``x - beta f(x)`` (the paper's Table 3)."""

    name = "badres_compare"
    Params = CompareParams
    params: CompareParams

    def prepare_model(self, model: nn.Module) -> nn.Module:
        skip = skips(model)[self.attacked_skip(model)]
        skip.gamma, skip.beta = 1.0, -float(self.params.beta)
        return model
