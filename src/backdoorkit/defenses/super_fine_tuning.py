"""Super-fine-tuning: fine-tuning with a cyclic, very large learning rate.

Sha et al., "Fine-Tuning Is All You Need to Mitigate Backdoor Attacks", arXiv 2212.09067, 2022; the
SFT baseline of the partial-training (PT) paper.  Scenario S1.  All layers are fine-tuned on the
defender's clean samples with plain SGD (no momentum, no weight decay) and a triangular cyclic rate
inspired by super-convergence: the rate climbs linearly from ``lr`` (0.03) to a peak over
``half_cycle`` (10) steps and falls back over the next 10, again and again; the peak is
``peak_lr`` (2.5) during the first ``first_phase`` (0.4) of the steps - large rates that move the
model far from the backdoored solution - and ``final_peak_lr`` (0.05) afterwards, so the model
settles.  Defaults as in backdoor-toolbox's port of the method: 100 epochs at batch 100 (its 40 of
100 epochs for the first phase).  The PT paper gives SFT 20 % of the training set as clean data.

The schedule is a :func:`backdoorkit.train.fit` ``lr_schedule`` through
:func:`backdoorkit.defenses.finetune.finetune`; ``min_steps`` (default off here: 100 epochs are
already many steps) applies as for every fine-tuning defense.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses import register_defense
from backdoorkit.defenses.base import DefenseResult, ModelRepair
from backdoorkit.defenses.finetune import TuneParams, finetune
from backdoorkit.train import LrSchedule

PAPER = "Sha et al., Fine-Tuning Is All You Need to Mitigate Backdoor Attacks, arXiv 2212.09067, 2022"


class SuperFineTuningParams(TuneParams):
    """Fine-tuning parameters with the cyclic schedule (defaults in the module docstring)."""

    epochs: int = Field(100, ge=0)
    min_steps: int | None = Field(None, ge=1)
    lr: float = Field(0.03, gt=0, description="base (lowest) learning rate")
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(100, ge=1)
    peak_lr: float = Field(2.5, gt=0)
    final_peak_lr: float = Field(0.05, gt=0)
    first_phase: float = Field(0.4, ge=0, le=1)
    half_cycle: int = Field(10, ge=1, description="steps from the base rate to the peak")

    @model_validator(mode="after")
    def _check(self) -> SuperFineTuningParams:
        if min(self.peak_lr, self.final_peak_lr) < self.lr:
            raise ValueError("the peak rates must be at least lr")
        return self


def cyclic_schedule(p: SuperFineTuningParams) -> LrSchedule:
    """``factor(step, total)`` of the base rate for the triangular cycles of the module docstring."""

    def schedule(step: int, total: int) -> float:
        peak = p.peak_lr if step < p.first_phase * total else p.final_peak_lr
        pos = step % (2 * p.half_cycle)
        rise = pos if pos < p.half_cycle else 2 * p.half_cycle - pos
        return (p.lr + (peak - p.lr) * rise / p.half_cycle) / p.lr

    return schedule


@register_defense
class SuperFineTuning(ModelRepair):
    """Super-fine-tuning: all layers, plain SGD, cyclic large learning rate."""

    name = "super_fine_tuning"
    paper = PAPER
    Params = SuperFineTuningParams

    params: SuperFineTuningParams

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        p = self.params
        _, tuned = finetune(model, clean, p, None, seed=seed, device=device, lr_schedule=cyclic_schedule(p))
        return DefenseResult(model, {"finetune": tuned, "finetune_seconds": tuned["seconds"]})
