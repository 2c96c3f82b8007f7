"""FT-FC: fine-tune only the classifier head on the clean samples (SSFT's baseline).

Yang et al., "Backdoor Defense via Suppressing Model Shortcuts", ICASSP 2023, Table 1.  Same data and
budget as SSFT: 10 epochs, SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 128, constant rate.
Only the head (``model.head_name``, else the last ``nn.Linear``) moves; every other parameter and
batch-norm statistic stays bit-identical.
"""

from __future__ import annotations

from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses import register_defense
from backdoorkit.defenses._shortcut import PAPER
from backdoorkit.defenses.base import DefenseResult, ModelRepair
from backdoorkit.defenses.finetune import TuneParams, finetune, head_name


class FTFCParams(TuneParams):
    """Fine-tuning parameters (SSFT's defaults)."""


@register_defense
class FTFC(ModelRepair):
    """FT-FC: fine-tune the classifier head only on the clean samples."""

    name = "ft_fc"
    paper = PAPER
    Params = FTFCParams

    params: FTFCParams

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        _, tuned = finetune(model, clean, self.params, [head_name(model)], seed=seed, device=device)
        return DefenseResult(model, {"finetune": tuned, "finetune_seconds": tuned["seconds"]})
