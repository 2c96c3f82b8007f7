"""NAD: neural attention distillation.

Li et al., "Neural Attention Distillation: Erasing Backdoor Triggers from Deep Neural Networks",
ICLR 2021 (official code: bboylyg/NAD).  Scenario S1.

1. **Teacher**: a copy of the suspicious model fine-tuned on the clean samples
   (:func:`backdoorkit.defenses.finetune.finetune`; ``teacher_epochs`` 10 at ``teacher_lr`` 0.01, the
   README's 5-10 epochs).
2. **Student**: the suspicious model itself, trained on the clean samples with cross-entropy plus, for
   each distilled stage ``l``, ``beta_l * MSE(A(student_l), A(teacher_l))``, where the attention map
   ``A(f)`` of a feature map ``f [B, C, H, W]`` sums ``|f|^p`` over the channels (``p = 2``) and
   L2-normalises the result over the spatial positions.  Stages: the last ``len(betas)`` feature
   stages of the model (``layer2``, ``layer3``, ``layer4`` of a ResNet-18, as BackdoorBox; the paper's
   three WRN groups), or ``layers=``; ``betas`` 500 / 1000 / 1000.  Activations come from
   :func:`backdoorkit.models.taps.capture`; the loss is a :func:`backdoorkit.train.fit` ``loss_fn``.
   The teacher stays frozen (eval mode).

Defaults of the erasing step (official ``config.py``): 20 epochs, batch 64, SGD lr 0.1, momentum 0.9,
weight decay 1e-4; the rate is divided by 10 after the first ``warm_fraction`` (0.1, i.e. epochs 0-1
of 20) of the steps.  Both steps keep :class:`~backdoorkit.defenses.finetune.TuneParams`' rule of at
least ``min_steps`` (400) optimiser steps on small clean sets.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses import register_defense
from backdoorkit.defenses.base import DefenseResult, ModelRepair
from backdoorkit.defenses.finetune import TuneParams, finetune
from backdoorkit.device import resolve_device
from backdoorkit.errors import ConfigError
from backdoorkit.models.stages import stage_names
from backdoorkit.models.taps import capture
from backdoorkit.train import Batch, LossFn

PAPER = (
    "Li et al., Neural Attention Distillation: Erasing Backdoor Triggers from Deep Neural Networks, ICLR 2021"
)


def _names(value: object) -> object:
    return tuple(s.strip() for s in value.split(",") if s.strip()) if isinstance(value, str) else value


class NADParams(TuneParams):
    """Teacher and erasing parameters (defaults in the module docstring)."""

    epochs: int = Field(20, ge=0)
    lr: float = Field(0.1, gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    warm_fraction: float = Field(0.1, ge=0, le=1, description="share of steps at the full rate")
    teacher_epochs: int = Field(10, ge=0)
    teacher_lr: float = Field(0.01, gt=0)
    betas: tuple[float, ...] = (500.0, 1000.0, 1000.0)
    power: float = Field(2.0, gt=0)
    layers: tuple[str, ...] | None = None

    @field_validator("layers", "betas", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        return _names(v)

    @model_validator(mode="after")
    def _check(self) -> NADParams:
        if not self.betas:
            raise ValueError("betas is empty")
        if self.layers is not None and len(self.layers) != len(self.betas):
            raise ValueError(f"{len(self.layers)} layers but {len(self.betas)} betas")
        return self


def attention_map(f: torch.Tensor, power: float) -> torch.Tensor:
    """``[B, H*W]``: ``sum_c |f_c|^p`` per position, L2-normalised over the positions."""
    return F.normalize(f.float().abs().pow(power).sum(1).flatten(1), dim=1)


def distillation_loss(
    teacher: nn.Module, layers: Sequence[str], betas: Sequence[float], power: float
) -> LossFn:
    """Cross-entropy plus the weighted attention-map MSE between the student and ``teacher``."""

    def loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        with capture(model, layers) as student:
            logits = model(batch.x)
        with torch.no_grad(), capture(teacher, layers, detach=True) as taught:
            teacher(batch.x)
        total = F.cross_entropy(logits.float(), batch.y)
        for name, beta in zip(layers, betas, strict=True):
            total = total + beta * F.mse_loss(
                attention_map(student[name], power), attention_map(taught[name], power)
            )
        return total, logits

    return loss


def step_down(warm_fraction: float, factor: float = 0.1):  # type: ignore[no-untyped-def]
    """Schedule: the base rate for the first ``warm_fraction`` of the steps, then ``factor`` of it."""

    def schedule(step: int, total: int) -> float:
        return 1.0 if step < warm_fraction * total else factor

    return schedule


@register_defense
class NAD(ModelRepair):
    """NAD: distil a clean-fine-tuned teacher's attention maps into the suspicious model."""

    name = "nad"
    paper = PAPER
    Params = NADParams

    params: NADParams

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        p = self.params
        layers = list(p.layers) if p.layers is not None else stage_names(model)[-len(p.betas) :]
        if len(layers) != len(p.betas):
            raise ConfigError(
                f"nad: the model has {len(layers)} stages for {len(p.betas)} betas; pass layers="
            )
        teacher = copy.deepcopy(model)
        tp = TuneParams(
            **{
                **p.model_dump(include=set(TuneParams.model_fields)),
                "epochs": p.teacher_epochs,
                "lr": p.teacher_lr,
            }
        )
        _, taught = finetune(teacher, clean, tp, None, seed=seed, device=device)
        teacher.to(resolve_device(device)).eval()
        for q in teacher.parameters():
            q.requires_grad_(False)
        _, tuned = finetune(
            model,
            clean,
            p,
            None,
            seed=seed,
            device=device,
            loss_fn=distillation_loss(teacher, layers, p.betas, p.power),
            lr_schedule=step_down(p.warm_fraction),
        )
        return DefenseResult(
            model,
            {"layers": layers, "teacher": taught, "finetune": tuned, "finetune_seconds": tuned["seconds"]},
        )
