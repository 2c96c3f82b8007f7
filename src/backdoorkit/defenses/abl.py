"""ABL: anti-backdoor learning (isolation with local gradient ascent, then unlearning).

Li et al., "Anti-Backdoor Learning: Training Clean Models on Poisoned Data", NeurIPS 2021 (official
code: bboylyg/ABL).  Scenario S3 (no clean data; it also runs in S2 and ignores the holdout).

1. **Isolation** (``isolation_epochs`` 10, SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128):
   a fresh model is trained on the untrusted set with the LGA objective ``sign(L - gamma) * L`` on the
   batch loss ``L`` (gamma 0.5), which keeps the loss of the slowly learnt clean rows near gamma while
   the backdoor rows, learnt fast, fall below it; ``objective="flooding"`` gives ``|L - b| + b`` with
   ``b = gamma`` (the official code's default, the same gradient).  The ``isolation`` fraction
   (default 1 %) of rows with the lowest loss under this model is set apart.
2. **Fine-tuning** (optional, ``finetune_epochs``; default the recipe's epochs, 0 to skip): the
   isolation model is trained on the other rows with the scenario's recipe (the official code: 60
   epochs, lr 0.1 with steps at 40 and 60).
3. **Unlearning**: gradient ascent on the isolated rows only (``-CE``), 5 epochs, SGD lr 5e-4,
   momentum 0.9, weight decay 1e-4, constant rate.

``isolated`` in the result is the set-apart rows; isolation precision / recall against the poisoned
mask are computed by :meth:`RobustTraining.evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses import register_defense
from backdoorkit.defenses._isolation import lowest_fraction, per_sample_loss
from backdoorkit.defenses.base import DefenseParams, DefenseResult, RobustTraining
from backdoorkit.train import Batch, LossFn, TrainConfig, fit

PAPER = "Li et al., Anti-Backdoor Learning: Training Clean Models on Poisoned Data, NeurIPS 2021"


class ABLParams(DefenseParams):
    """ABL parameters (defaults in the module docstring)."""

    objective: Literal["lga", "flooding"] = "lga"
    gamma: float = Field(0.5, ge=0)
    isolation: float = Field(0.01, gt=0, lt=1)
    isolation_epochs: int = Field(10, ge=0)
    isolation_lr: float = Field(0.1, gt=0)
    isolation_weight_decay: float = Field(1e-4, ge=0)
    isolation_batch_size: int = Field(128, ge=1)
    finetune_epochs: int | None = Field(None, ge=0, description="None: the recipe's epochs; 0: skip")
    unlearn_epochs: int = Field(5, ge=0)
    unlearn_lr: float = Field(5e-4, gt=0)
    unlearn_batch_size: int = Field(128, ge=1)


def lga_loss(gamma: float, objective: str = "lga") -> LossFn:
    """The isolation objective on the batch cross-entropy ``L``: ``sign(L - gamma) * L`` or flooding."""

    def loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch.x)
        ce = F.cross_entropy(logits.float(), batch.y)
        if objective == "flooding":
            return (ce - gamma).abs() + gamma, logits
        return torch.sign(ce - gamma) * ce, logits

    return loss


def ascent_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient ascent on the batch: ``-CE``."""
    logits = model(batch.x)
    return -F.cross_entropy(logits.float(), batch.y), logits


@register_defense
class ABL(RobustTraining):
    """ABL: isolate the lowest-loss rows under LGA training, optionally fine-tune, then unlearn them."""

    name = "abl"
    paper = PAPER
    Params = ABLParams

    params: ABLParams

    def _train(
        self,
        untrusted: ImageSet,
        holdout: ImageSet | None,
        *,
        model_factory: Callable[[], nn.Module],
        config: TrainConfig,
        seed: int,
    ) -> DefenseResult:
        p = self.params
        cfg = config.model_copy(update={"seed": seed})
        model = model_factory()
        iso_fit = fit(
            model,
            untrusted,
            cfg,
            loss_fn=lga_loss(p.gamma, p.objective),
            optimizer="sgd",
            epochs=p.isolation_epochs,
            lr=p.isolation_lr,
            momentum=0.9,
            nesterov=False,
            weight_decay=p.isolation_weight_decay,
            batch_size=p.isolation_batch_size,
            schedule="constant",
        )
        isolated = lowest_fraction(per_sample_loss(model, untrusted), p.isolation)
        info: dict[str, Any] = {
            "isolated": int(isolated.sum()),
            "isolation_fit": {
                "steps": iso_fit.steps,
                "seconds": iso_fit.seconds,
                "final_loss": iso_fit.losses[-1] if iso_fit.losses else None,
            },
        }
        kept = untrusted.subset(~isolated.to(untrusted.device))
        epochs = cfg.epochs if p.finetune_epochs is None else p.finetune_epochs
        if epochs > 0 and len(kept):
            tuned = fit(model, kept, cfg, epochs=epochs)
            info["finetune"] = {"steps": tuned.steps, "seconds": tuned.seconds}
        bad = untrusted.subset(isolated.to(untrusted.device))
        if p.unlearn_epochs > 0:
            un = fit(
                model,
                bad,
                cfg,
                loss_fn=ascent_loss,
                optimizer="sgd",
                epochs=p.unlearn_epochs,
                lr=p.unlearn_lr,
                momentum=0.9,
                nesterov=False,
                weight_decay=p.isolation_weight_decay,
                batch_size=p.unlearn_batch_size,
                schedule="constant",
                drop_last=False,
            )
            info["unlearn"] = {"steps": un.steps, "seconds": un.seconds}
        return DefenseResult(model, info, isolated=isolated)


__all__ = ["ABL", "ABLParams", "ascent_loss", "lga_loss"]
