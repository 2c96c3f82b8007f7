"""Latent backdoor (Yao et al., "Latent Backdoor Attacks on Deep Neural Networks", CCS 2019), as the
adaptive attack against Trap-and-Replace (Wang et al., NeurIPS 2022, appendix C.1: "LBA-k").

The backdoor is written into the *representation* that enters block k, not into the output layer:
while the victim trains on BadNets-poisoned data, an extra loss pulls the stem's features of every
poisoned image (the trigger stamped on) towards the mean stem feature of clean target-class images.
The stem (everything before block k) then maps triggered inputs into the target's region of feature
space, so a head (block k onwards) trained afresh on clean data - T&R's head replacement, or transfer
learning in Yao et al. - still sends them to the target.

Our version, in two phases with the given config each: (1) train on the clean rows; (2) measure
``c_t``, the mean stem feature of the clean target-class images, and train on the poisoned set with
``cross-entropy + weight * ||stem(x_p) - c_t||^2 / ||c_t||^2`` over the poisoned rows of each batch
(``c_t`` fixed).  Yao et al. also optimise the trigger towards the target's features and train on
a teacher model; we keep BadNets' fixed patch (``variant`` / ``size`` / ``margin`` as in
:mod:`~backdoorkit.attacks.badnets`), a stated simplification.

Defaults: ``block=-2`` (the head holds the last two blocks and the classifier: ResNet-18's
``layer4``), ``weight=10.0``, BadNets' 3x3 white bottom-right patch, rate 0.1, target 0, all-to-one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from backdoorkit.attacks import register_attack
from backdoorkit.attacks._structure import block_before, clean_rows
from backdoorkit.attacks.badnets import BadNets, BadNetsParams
from backdoorkit.attacks.base import PoisonedSet
from backdoorkit.data.imageset import ImageSet, to_pixels
from backdoorkit.device import eval_mode

if TYPE_CHECKING:
    from backdoorkit.train import Batch, TrainConfig


class LatentParams(BadNetsParams):
    block: int | str = Field(-2, description="block k: the backdoor lives in the representation entering it")
    weight: float = Field(10.0, ge=0.0, description="weight of the latent (feature-matching) loss")


@register_attack
class LatentBackdoor(BadNets):
    """LBA-k: BadNets whose trigger is also matched to the target's features before block k."""

    name = "latent_backdoor"
    paper = "Yao et al., Latent Backdoor Attacks on Deep Neural Networks, CCS 2019"
    supports_all2all = False
    Params = LatentParams
    params: LatentParams

    def split_point(self, model: nn.Module) -> str:
        """The block after which the stem ends (the one just before block k)."""
        return block_before(model, self.params.block)[0]

    def train_victim(
        self, model_factory: Callable[[], nn.Module], poisoned: PoisonedSet, config: TrainConfig
    ) -> nn.Module:
        """Phase 1: fit on the clean rows; phase 2: fit on the poisoned set with the latent loss
        towards the target's mean stem feature measured after phase 1 (fixed)."""
        from backdoorkit.train import fit

        model = self.prepare_model(model_factory())
        clean = clean_rows(poisoned)
        fit(model, clean, config)
        stem, head = model.split(self.split_point(model))
        centroid = _mean_feature(stem, clean.subset((clean.y == self.target).nonzero().flatten()))
        poison = poisoned.mask.clone()
        weight = float(self.params.weight)
        state: dict[str, torch.Tensor] = {}

        def loss(_: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
            if "poison" not in state:
                state["poison"] = poison.to(batch.idx.device)
                state["centroid"] = centroid.to(batch.idx.device)
            feats = stem(batch.x)
            logits = head(feats)
            c = state["centroid"]
            p = state["poison"][batch.idx].float()
            gap = (feats.flatten(1).float() - c).pow(2).mean(1) / c.pow(2).mean().clamp(min=1e-6)
            latent = (gap * p).sum() / p.sum().clamp(min=1.0)
            return F.cross_entropy(logits.float(), batch.y) + weight * latent, logits

        fit(model, poisoned.data, config, loss_fn=loss)
        return model.eval()


@torch.no_grad()
def _mean_feature(stem: nn.Module, data: ImageSet, batch_size: int = 512) -> torch.Tensor:
    """The mean flattened stem output over ``data`` (eval mode)."""
    dev = next(stem.parameters()).device
    total = None
    with eval_mode(stem):
        for start in range(0, len(data), batch_size):
            part = stem(to_pixels(data.x[start : start + batch_size].to(dev))).flatten(1).float().sum(0)
            total = part if total is None else total + part
    assert total is not None
    return total / len(data)
