"""PT: partial training to isolate suspicious samples, then unlearning them.

Li & Gao, "Partial train and isolate, mitigate backdoor attack", 2024.  Scenario S3 (no clean data
needed; it also runs in S2 and ignores the holdout).

1. **Base model** ``M_s``: the architecture trained normally on the untrusted set ``D`` (the scenario's
   recipe).
2. **Partially trained model** ``M'``: the same architecture and initialisation with its first layers
   frozen (default the first 10 % of the weight layers, convolutions and linear layers counted in
   module order, with the normalisation layers between them), trained on ``D`` with the same recipe.
   The frozen front limits how well clean samples are fitted while the easy trigger is still learnt,
   which widens the loss gap between poisoned and clean rows.  The paper does not give M''s recipe;
   ``probe_epochs`` / ``probe_lr`` / ``probe_schedule`` set it (default: the recipe).
3. **Isolation**: every row of ``D`` is ranked by its cross-entropy under ``M'`` (eval mode, no
   augmentation); the lowest ``isolation`` fraction (default 1/10) is ``D_s``, the rest ``D_c``.
4. **Unlearning** from ``M_s``: 10 epochs over ``D`` with ``CE(D_c) - CE(D_s)``, lr 0.001 on ``D_c`` and
   0.0001 on ``D_s`` (the paper's rates; one optimiser at lr 0.001 with the ``D_s`` term weighted by
   0.1 is the same update for plain SGD), SGD momentum 0.9, constant rate, the recipe's augmentation.
   Each term is a mean over its rows in the batch.

The paper compares isolation by ``M'`` with isolation by ``M_s`` itself; ``info["base_isolated"]``
holds the rows ``M_s`` would isolate and :meth:`PartialTraining.evaluate` scores both against the
poisoned mask (``iso_precision`` / ``iso_recall`` for ``M'``, ``iso_base_precision`` /
``iso_base_recall`` for ``M_s``).  The defense itself never sees the mask.  PT's premise - the frozen
front holds ``M'`` below ``M_s`` on ``D`` - is reported without the mask: ``base_fit_acc`` and
``probe_fit_acc`` are the two models' training accuracy on ``D`` in their last epoch (train mode, as
:func:`~backdoorkit.train.fit` measures it); where they are equal, the loss ranking has little to work with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses import register_defense
from backdoorkit.defenses._isolation import lowest_fraction, per_sample_loss, split_loss
from backdoorkit.defenses.base import DefenseParams, DefenseResult, RobustTraining
from backdoorkit.train import TrainConfig, fit

PAPER = "Li & Gao, Partial train and isolate, mitigate backdoor attack, 2024"


class PartialTrainingParams(DefenseParams):
    """PT parameters (defaults in the module docstring; ``None`` = the scenario's recipe)."""

    frozen: float = Field(0.1, ge=0, lt=1, description="fraction of weight layers frozen in M'")
    isolation: float = Field(0.1, gt=0, lt=1, description="fraction of rows isolated as D_s")
    epochs: int | None = Field(None, ge=0, description="epochs of M_s and M' (None: the recipe's)")
    probe_epochs: int | None = Field(None, ge=0, description="epochs of M' (None: as M_s)")
    probe_lr: float | None = Field(None, gt=0, description="learning rate of M' (None: the recipe's)")
    probe_schedule: Literal["onecycle", "cosine", "step", "constant"] | None = None
    unlearn_epochs: int = Field(10, ge=0)
    lr_clean: float = Field(1e-3, gt=0)
    lr_isolated: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)


def front_layers(model: nn.Module, fraction: float) -> list[str]:
    """Names of the leaf modules with parameters that make up the first ``fraction`` of weight layers.

    Weight layers are convolutions and linear layers in module order; the normalisation (or other
    parameterised) leaves before the first unfrozen weight layer are frozen with them.  At least one
    weight layer is frozen when ``fraction > 0``.
    """
    leaves = [
        (n, m) for n, m in model.named_modules() if not list(m.children()) and list(m.parameters(False))
    ]
    weights = [i for i, (_, m) in enumerate(leaves) if isinstance(m, nn.Conv2d | nn.Linear)]
    if fraction <= 0 or not weights:
        return []
    k = min(len(weights), max(1, round(fraction * len(weights))))
    stop = weights[k] if k < len(weights) else len(leaves)
    return [n for n, _ in leaves[:stop]]


@register_defense
class PartialTraining(RobustTraining):
    """PT: isolate the lowest-loss rows with a partially frozen model, then unlearn them from M_s."""

    name = "partial_training"
    paper = PAPER
    Params = PartialTrainingParams

    params: PartialTrainingParams

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
        recipe = {"epochs": p.epochs} if p.epochs is not None else {}
        base = model_factory()
        base_fit = fit(base, untrusted, cfg, **recipe)

        probe = model_factory()
        frozen = set(front_layers(probe, p.frozen))
        trainable = [q for n, m in probe.named_modules() if n not in frozen for q in m.parameters(False)]
        probe_cfg = {**recipe, **({"epochs": p.probe_epochs} if p.probe_epochs is not None else {})}
        probe_cfg.update(
            {k: v for k, v in (("lr", p.probe_lr), ("schedule", p.probe_schedule)) if v is not None}
        )
        probe_fit = fit(probe, untrusted, cfg, trainable=trainable, **probe_cfg)

        t0 = time.perf_counter()
        isolated = lowest_fraction(per_sample_loss(probe, untrusted), p.isolation)
        base_isolated = lowest_fraction(per_sample_loss(base, untrusted), p.isolation)
        overlap = float((isolated & base_isolated).sum()) / max(int(isolated.sum()), 1)
        iso_seconds = time.perf_counter() - t0

        unlearn = fit(
            base,
            untrusted,
            cfg,
            loss_fn=split_loss(isolated, p.lr_isolated / p.lr_clean, cfg.label_smoothing),
            optimizer="sgd",
            epochs=p.unlearn_epochs,
            lr=p.lr_clean,
            momentum=p.momentum,
            nesterov=False,
            weight_decay=p.weight_decay,
            schedule="constant",
        )
        info: dict[str, Any] = {
            "frozen_layers": sorted(frozen, key=list(dict(probe.named_modules())).index),
            "isolated": int(isolated.sum()),
            "base_isolated": torch.nonzero(base_isolated).flatten().tolist(),
            "isolation_seconds": iso_seconds,
            "unlearn": {
                "steps": unlearn.steps,
                "final_loss": unlearn.losses[-1] if unlearn.losses else None,
                "seconds": unlearn.seconds,
            },
        }
        metrics = {
            "isolation_overlap": overlap,
            # PT's premise, checkable without the mask: the frozen front should hold M' below M_s on D
            "base_fit_acc": base_fit.accuracies[-1] if base_fit.accuracies else float("nan"),
            "probe_fit_acc": probe_fit.accuracies[-1] if probe_fit.accuracies else float("nan"),
        }
        return DefenseResult(base, info, isolated=isolated, metrics=metrics)

    def evaluate(
        self, result: DefenseResult, test: ImageSet, attack: Any = None, *, mask: torch.Tensor | None = None
    ) -> dict[str, float]:
        """As :meth:`RobustTraining.evaluate`, plus the isolation precision / recall of ``M_s``."""
        from backdoorkit.metrics import isolation_metrics

        out = super().evaluate(result, test, attack, mask=mask)
        rows = result.info.get("base_isolated")
        if mask is not None and rows is not None:
            iso = isolation_metrics(torch.tensor(rows, dtype=torch.long), mask)
            out.update(iso_base_precision=iso["precision"], iso_base_recall=iso["recall"])
        return out


__all__ = ["PartialTraining", "PartialTrainingParams", "front_layers"]
