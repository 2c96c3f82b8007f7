"""The pruning-aware attack (Liu et al., "Fine-Pruning: Defending Against Backdooring Attacks on Deep
Neural Networks", RAID 2018, Section 5; summarised in the defense survey of /work/shared/papers, its
Figures 7-8): the attacker anticipates fine-pruning, which prunes the last convolutional layer's
channels in increasing order of their mean activation on clean data.

Steps (``train_victim``):

1. train the victim's model on the clean rows (the given config);
2. measure each channel's mean activation on those clean rows at the last convolutional feature
   maps (after their activation: ResNet-18's ``layer4``) and prune the ``prune`` fraction that are
   most dormant (a channel mask on that layer's output);
3. train the pruned model on the poisoned set (BadNets' patch), so the backdoor has to live in the
   channels clean inputs use as well;
4. reinstate the pruned channels (remove the mask) and, as Liu et al. do, lower their biases so they
   stay inactive: we subtract ``decoy_shift`` from the bias of the last batch norm inside ``layer``
   for those channels (ResNet-18: ``layer4.1.bn2``, just before the residual addition and the ReLU;
   skipped when the layer has no batch norm of that width).  The reinstated channels are then the
   most dormant on clean data and the first a pruning defense removes: decoys, whose removal gives
   back exactly the network the backdoor was trained into (:attr:`PruningAware.decoys` lists them).

Defaults: ``prune=0.5`` of the channels (ours: the paper's attacker prunes a parameter-chosen number),
``decoy_shift=5.0`` (in units of the batch norm's output scale),
``layer`` = the last feature-map stage of our classifiers (give a module name for other models),
BadNets' 3x3 white bottom-right patch, rate 0.1, target 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from pydantic import Field
from torch import nn

from backdoorkit.attacks import register_attack
from backdoorkit.attacks._structure import clean_rows
from backdoorkit.attacks.badnets import BadNets, BadNetsParams
from backdoorkit.attacks.base import PoisonedSet
from backdoorkit.data.imageset import ImageSet, to_pixels
from backdoorkit.device import eval_mode
from backdoorkit.errors import ConfigError
from backdoorkit.models.taps import capture, resolve_modules

if TYPE_CHECKING:
    from backdoorkit.train import TrainConfig


class PruningAwareParams(BadNetsParams):
    prune: float = Field(0.5, gt=0.0, lt=1.0, description="fraction of the layer's channels pruned in step 2")
    layer: str | None = Field(None, description="module whose output channels are pruned")
    decoy_shift: float = Field(5.0, ge=0.0, description="bias decrease of the reinstated channels")


def last_feature_layer(model: nn.Module) -> str:
    """The chain entry just before pooling (our classifiers), else the last ``Conv2d`` module."""
    chain = getattr(model, "chain", None)
    pool = getattr(model, "pool_name", None)
    if callable(chain) and pool:
        names = [n for n, _ in chain()]
        if pool in names and names.index(pool) > 0:
            return names[names.index(pool) - 1]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"pruning_aware: {type(model).__name__} has no convolutional layer to prune")
    return convs[-1]


@torch.no_grad()
def channel_activity(model: nn.Module, layer: str, data: ImageSet, batch_size: int = 512) -> torch.Tensor:
    """Mean activation of each output channel of ``layer`` over ``data`` (``[C]``, on the CPU)."""
    dev = next(model.parameters()).device
    total: torch.Tensor | None = None
    with eval_mode(model), capture(model, layer, detach=True) as acts:
        for start in range(0, len(data), batch_size):
            model(to_pixels(data.x[start : start + batch_size].to(dev)))
            out = acts[layer].float()
            if out.dim() != 4:
                raise ConfigError(f"pruning_aware: {layer!r} does not output feature maps [B, C, H, W]")
            part = out.mean((2, 3)).sum(0)
            total = part if total is None else total + part
    assert total is not None
    return (total / len(data)).cpu()


@register_attack
class PruningAware(BadNets):
    """Prune dormant channels, train the backdoor into the pruned model, reinstate them as decoys."""

    name = "pruning_aware"
    paper = "Liu et al., Fine-Pruning, RAID 2018 (the pruning-aware attack)"
    Params = PruningAwareParams
    params: PruningAwareParams

    decoys: list[int] | None = None
    """The reinstated (decoy) channels of the last victim trained, by index."""

    def tap(self, model: nn.Module) -> str:
        """The module whose output channels are pruned."""
        name = self.params.layer or last_feature_layer(model)
        resolve_modules(model, name)
        return name

    def retrain(self, model: nn.Module, poisoned: PoisonedSet, config: TrainConfig) -> nn.Module:
        """Steps 2-4 on a model trained on clean data (changed in place; returned in eval mode)."""
        from backdoorkit.train import fit

        layer = self.tap(model)
        activity = channel_activity(model, layer, clean_rows(poisoned))
        count = max(1, round(self.params.prune * len(activity)))
        pruned = torch.argsort(activity)[:count]
        keep = torch.ones(len(activity))
        keep[pruned] = 0.0
        module = model.get_submodule(layer)
        cache: dict[str, torch.Tensor] = {}

        def mask(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
            key = f"{out.device}:{out.dtype}"
            if key not in cache:
                cache[key] = keep.to(out.device, out.dtype).view(1, -1, 1, 1)
            return out * cache[key]

        handle = module.register_forward_hook(mask)
        try:
            fit(model, poisoned.data, config)
        finally:
            handle.remove()
        self.decoys = sorted(pruned.tolist())
        norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d) and m.num_features == len(keep)]
        if norms and norms[-1].affine and self.params.decoy_shift > 0:
            with torch.no_grad():
                bias = norms[-1].bias
                bias[pruned.to(bias.device)] -= self.params.decoy_shift
        return model.eval()

    def train_victim(
        self, model_factory: Callable[[], nn.Module], poisoned: PoisonedSet, config: TrainConfig
    ) -> nn.Module:
        from backdoorkit.train import fit

        model = self.prepare_model(model_factory())
        fit(model, clean_rows(poisoned), config)
        return self.retrain(model, poisoned, config)
