"""SSFT: shortcut suppression with fine-tuning.

Yang et al., "Backdoor Defense via Suppressing Model Shortcuts", ICASSP 2023 (official code:
20000yshust/Backdoor-Defense-Via-Suppressing-Model-Shortcuts).  Scenario S1: a suspicious model and a
small clean set (10 % of the training set in the paper).

1. **Select the critical skip(s)** from the clean samples only (:mod:`backdoorkit.defenses._shortcut`):
   fine-tune a copy of the model on a surrogate backdoor the defender plants itself (a 3x3 white
   BadNets patch near the top-left corner, rate 0.3, seeded random target, on 70 % of the clean
   samples, until it works), scan its skips on the other 30 % with gamma = 1.0, 0.9, ..., 0.0 and keep
   the ``k = 1`` skip with the highest score.  ``score="previous"`` (default, the rule this defense
   has always used): ``max_i (ASR(g_{i-1}) - ASR(g_i)) / exp(ASR(g_{i-1}))`` over consecutive grid
   points (gamma decreasing, ASR as a fraction).  ``score="official"`` (the ``ssft_paper`` preset):
   the official ``chooselayer.py`` rule, the exponent at the *smaller* gamma with ASR in percent -
   the skip whose suppression completes the removal of the surrogate backdoor.
   ``score="margin"``: ``max_g [(ASR(1) - ASR(g)) - (BA(1) - BA(g))]``, which also penalises BA loss
   (see :func:`backdoorkit.analysis.critical_scores`).
2. **Suppress** the chosen skip(s) on the suspicious model: ``mode="standard"`` sets gamma = 0 (SSFT);
   ``mode="optimized"`` (SSFT*) uses the gamma at which the chosen skip's score is attained on the
   surrogate scan (for ``official``: the gamma just after the sharpest ASR drop); ``gamma=`` any value.
3. **Fine-tune** the enclosing stage of the critical skip(s) (``tune="stage"``, default, as the
   official code: ``layer3`` for ``layer3.1``; a removed skip costs BA, and the whole stage has more
   capacity to restore it than the block alone - on digits "block" was no better at removing the
   backdoor and sometimes kept less BA) on the clean samples: 10 epochs, SGD lr 0.01, momentum 0.9,
   weight decay 5e-4, batch 128, constant rate.  Parameters outside the tuned modules stay
   bit-identical; so do their batch-norm statistics with ``frozen_bn="eval"`` (default), while
   ``frozen_bn="train"`` (the official code: the whole model in train mode) lets them re-estimate
   their running statistics on the clean samples.  ``augment=False`` fine-tunes without augmentation
   as the official code does (default: the dataset's recipe).

Scale.  The paper's 10 epochs on 5,000 CIFAR-10 images are ~400 optimiser steps; 10 % of digits is 144
images, i.e. 20 steps, too few to restore BA after a suppression.  On digits (ResNet-18 width 8,
BadNets, three seeds) SSFT needed ~100 epochs (200 steps) to work; give ``epochs`` (or ``steps``) so
the step count is of the paper's order.

Where we differ from the official code: its layer search (``chooselayer.py``) does not run as
committed, does not say how the surrogate set is built and the method defaults to ``layer3.1``; here
the surrogate is built from the defender's own clean samples with the checks above.  The returned
model keeps the chosen gammas in its :class:`~backdoorkit.models.skips.Skip` modules, so
:func:`backdoorkit.checkpoint.save_model` records them in the sidecar.
"""

from __future__ import annotations

from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses import register_defense
from backdoorkit.defenses._shortcut import (
    PAPER,
    SelectSuppressParams,
    TuneScope,
    critical_modules,
    select_and_suppress,
)
from backdoorkit.defenses.base import DefenseResult, ModelRepair
from backdoorkit.defenses.finetune import TuneParams, finetune


class SSFTParams(SelectSuppressParams, TuneScope, TuneParams):
    """Selection + suppression + fine-tuning parameters (defaults in the module docstring)."""


@register_defense
class SSFT(ModelRepair):
    """SSFT: suppress the critical skip connection(s) and fine-tune their stage on clean samples."""

    name = "ssft"
    paper = PAPER
    Params = SSFTParams

    params: SSFTParams

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        p = self.params
        sel, info = select_and_suppress(model, clean, p, seed=seed, device=device)
        _, tuned = finetune(model, clean, p, critical_modules(sel.layers, p.tune), seed=seed, device=device)
        return DefenseResult(model, {**info, "finetune": tuned, "finetune_seconds": tuned["seconds"]})
