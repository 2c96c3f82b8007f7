"""Pruning: remove the last feature channels that the clean samples leave dormant (no fine-tuning).

Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural
Networks", RAID 2018, Section 4 ("pruning defense").  Scenario S1.  The channels of the last feature
maps are ranked by mean activation on part of the defender's clean samples and pruned, least active
first, until the accuracy on the held-out rest would drop by more than ``max_drop`` (default 0.10); see
:mod:`backdoorkit.defenses._prune` for the exact rule.  The paper shows this defense alone is bypassed
(its pruning-aware attack) and often leaves much of a backdoor in place; ``fine_pruning`` adds the
fine-tuning step.
"""

from __future__ import annotations

from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses import register_defense
from backdoorkit.defenses._prune import PAPER, PruneParams, prune_last_channels
from backdoorkit.defenses.base import DefenseResult, ModelRepair


class PruningParams(PruneParams):
    """Pruning parameters: ``max_drop`` 0.10, ``max_ratio`` 0.95, ``val_fraction`` 0.3."""


@register_defense
class Pruning(ModelRepair):
    """Prune the least active last-layer channels on clean samples until held-out accuracy drops."""

    name = "pruning"
    paper = PAPER
    Params = PruningParams

    params: PruningParams

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        _, info = prune_last_channels(model, clean, self.params, seed=seed, device=device)
        return DefenseResult(model, {"pruning": info}, metrics={"pruned_ratio": info["pruned_ratio"]})
