"""Fine-pruning: prune the dormant last feature channels, then fine-tune on the clean samples.

Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural
Networks", RAID 2018.  Scenario S1.

1. **Prune** (:mod:`backdoorkit.defenses._prune`): rank the channels of the last feature maps by mean
   activation on a part of the defender's clean samples, prune least active first until the accuracy
   on the held-out rest would drop by more than ``max_drop`` (default 0.10, as BackdoorBench and
   backdoor-toolbox), at most ``max_ratio`` (0.95) of them.
2. **Fine-tune** all layers on all the clean samples with :func:`backdoorkit.defenses.finetune.finetune`
   (defaults of :class:`~backdoorkit.defenses.finetune.TuneParams`: 10 epochs, SGD lr 0.01, momentum
   0.9, weight decay 5e-4, constant rate, at least 400 steps).  The pruned channels stay pruned: their
   head columns are set back to zero after every step.  (The official Caffe code fine-tunes at a fixed
   lr 0.001; BackdoorBench uses 100 epochs at lr 0.01 with a cosine schedule; pass ``lr`` /
   ``epochs`` / ``schedule`` for either.)
"""

from __future__ import annotations

from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses import register_defense
from backdoorkit.defenses._prune import PAPER, KeepPruned, PruneParams, linear_head, prune_last_channels
from backdoorkit.defenses.base import DefenseResult, ModelRepair
from backdoorkit.defenses.finetune import TuneParams, finetune


class FinePruningParams(PruneParams, TuneParams):
    """Pruning + fine-tuning parameters (defaults in the module docstring)."""


@register_defense
class FinePruning(ModelRepair):
    """Fine-pruning: prune dormant last-layer channels, then fine-tune on the clean samples."""

    name = "fine_pruning"
    paper = PAPER
    Params = FinePruningParams

    params: FinePruningParams

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        p = self.params
        channels, info = prune_last_channels(model, clean, p, seed=seed, device=device)
        keep = KeepPruned(linear_head(model), channels)
        _, tuned = finetune(model, clean, p, None, seed=seed, device=device, callbacks=[keep])
        return DefenseResult(
            model,
            {"pruning": info, "finetune": tuned, "finetune_seconds": tuned["seconds"]},
            metrics={"pruned_ratio": info["pruned_ratio"]},
        )
