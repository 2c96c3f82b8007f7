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
    SelectParams,
    SuppressParams,
    needs_scan,
    select_critical,
    suppress,
    suppression_gammas,
)
from backdoorkit.defenses.base import DefenseResult, ModelRepair


class SSParams(SelectParams, SuppressParams):
    """Selection + suppression parameters (no fine-tuning)."""


@register_defense
class ShortcutSuppression(ModelRepair):
    """SS: suppress the critical skip connection(s) selected on a surrogate backdoor; no fine-tuning."""

    name = "ss"
    paper = PAPER
    Params = SSParams

    params: SSParams

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        p = self.params
        need = needs_scan(p) or not p.layers
        sel = select_critical(model, clean, p, seed=seed, device=device, need_scan=need)
        gammas = suppression_gammas(sel, p)
        suppress(model, gammas)
        return DefenseResult(
            model,
            {
                "layers": sel.layers,
                "gammas": gammas,
                "mode": "explicit" if p.gamma is not None else p.mode,
                "scan": sel.scan,
                "selection": sel.info(),
                "selection_seconds": sel.seconds,
            },
        )
