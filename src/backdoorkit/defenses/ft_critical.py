"""FT-Critical: fine-tune the critical layer(s) without suppressing their skips (Table 2 ablation).

Yang et al., "Backdoor Defense via Suppressing Model Shortcuts", ICASSP 2023.  Selection as in
:mod:`backdoorkit.defenses.ssft`; then the same modules SSFT would tune (``tune="stage"``: the enclosing
stage, default; ``"block"``: the block) are fine-tuned on the clean samples with SSFT's budget
(10 epochs, SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 128, constant rate), every gamma left
as it was.  The paper reports that this keeps BA but barely lowers ASR (96.7 % on CIFAR-10 BadNets).
"""

from __future__ import annotations

from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses import register_defense
from backdoorkit.defenses._shortcut import (
    PAPER,
    SelectParams,
    TuneScope,
    critical_modules,
    select_critical,
)
from backdoorkit.defenses.base import DefenseResult, ModelRepair
from backdoorkit.defenses.finetune import TuneParams, finetune


class FTCriticalParams(SelectParams, TuneScope, TuneParams):
    """Selection + fine-tuning parameters (no suppression)."""


@register_defense
class FTCritical(ModelRepair):
    """FT-Critical: fine-tune the stage (or block) of the selected critical skip(s), no suppression."""

    name = "ft_critical"
    paper = PAPER
    Params = FTCriticalParams

    params: FTCriticalParams

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        p = self.params
        sel = select_critical(model, clean, p, seed=seed, device=device, need_scan=not p.layers)
        modules = critical_modules(sel.layers, p.tune)
        _, tuned = finetune(model, clean, p, modules, seed=seed, device=device)
        return DefenseResult(
            model,
            {
                "layers": sel.layers,
                "gammas": {},
                "scan": sel.scan,
                "selection": sel.info(),
                "finetune": tuned,
                "selection_seconds": sel.seconds,
                "finetune_seconds": tuned["seconds"],
            },
        )
