"""SS: shortcut suppression only - SSFT without its fine-tuning (the ablation of Table 2).

Yang et al., "Backdoor Defense via Suppressing Model Shortcuts", ICASSP 2023.  The critical skip(s)
are selected exactly as in :mod:`backdoorkit.defenses.ssft` (surrogate backdoor on the defender's clean
samples, ``score="official"``, ``k = 1``) and suppressed (``mode="standard"``: gamma = 0;
``"optimized"``: the surrogate optimum; or ``gamma=``); no weight changes.  The paper reports a low
ASR but a collapsed BA (14.3 % on CIFAR-10 BadNets).
"""

from __future__ import annotations

from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses import register_defense
from backdoorkit.defenses._shortcut import (
    PAPER,
    SelectSuppressParams,
    select_and_suppress,
)
from backdoorkit.defenses.base import DefenseResult, ModelRepair


class SSParams(SelectSuppressParams):
    """Selection + suppression parameters (no fine-tuning)."""


@register_defense
class ShortcutSuppression(ModelRepair):
    """SS: suppress the critical skip connection(s) selected on a surrogate backdoor; no fine-tuning."""

    name = "ss"
    paper = PAPER
    Params = SSParams

    params: SSParams

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        _, info = select_and_suppress(model, clean, self.params, seed=seed, device=device)
        return DefenseResult(model, info)
