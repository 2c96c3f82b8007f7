"""FT-All: fine-tune every layer on the clean samples (SSFT's baseline).

Yang et al., "Backdoor Defense via Suppressing Model Shortcuts", ICASSP 2023, Table 1.  Same data and
budget as SSFT: 10 epochs, SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 128, constant rate;
all parameters trained, batch-norm statistics updated.
"""

from __future__ import annotations

from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses import register_defense
from backdoorkit.defenses._shortcut import PAPER
from backdoorkit.defenses.base import DefenseResult, ModelRepair
from backdoorkit.defenses.finetune import TuneParams, finetune


class FTAllParams(TuneParams):
    """Fine-tuning parameters (SSFT's defaults)."""


@register_defense
class FTAll(ModelRepair):
    """FT-All: fine-tune all layers on the clean samples."""

    name = "ft_all"
    paper = PAPER
    Params = FTAllParams

    params: FTAllParams

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        _, tuned = finetune(model, clean, self.params, None, seed=seed, device=device)
        return DefenseResult(model, {"finetune": tuned, "finetune_seconds": tuned["seconds"]})
