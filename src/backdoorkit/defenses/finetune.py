"""Fine-tuning on the defender's clean samples: the part every fine-tuning defense shares.

FT-FC, FT-All, FT-Critical and SSFT (Yang et al., "Backdoor Defense via Suppressing Model
Shortcuts", ICASSP 2023), and the fine-tuning phases of NAD, fine-pruning and super-fine-tuning, all
fine-tune (part of) a suspicious model on a small clean set.  This module holds the pieces:

* :class:`TuneParams`: the fine-tuning hyper-parameters (SSFT's setup by default: 10 epochs, SGD lr
  0.01, momentum 0.9, weight decay 5e-4, batch 128, constant rate, at least 400 steps);
* :func:`tune_steps` / :func:`tune_config`: the :class:`~backdoorkit.train.TrainConfig` of such a run;
* :func:`finetune`: run it on the named submodules (or all) through :func:`backdoorkit.train.fit`,
  passing any of ``fit``'s extension points (``loss_fn``, ``callbacks``, ``lr_schedule``,
  ``optimizer``, ``state`` ...) through;
* :func:`head_name`: the classifier head of a model.

It registers no defense (``backdoorkit.defenses`` imports it like every module of the package).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field
from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.defenses.base import DefenseParams
from backdoorkit.errors import ConfigError
from backdoorkit.train import FitResult, TrainConfig, fit, make_optimizer, parameters_of

__all__ = ["TuneParams", "finetune", "head_name", "tune_config", "tune_steps"]


class TuneParams(DefenseParams):
    """Fine-tuning on the clean samples (the SSFT paper's defense setup; official ``SSFT.py``).

    Defaults: 10 epochs, SGD lr 0.01, momentum 0.9 (no Nesterov, as torch's default SGD), weight decay
    5e-4, batch 128, constant learning rate (the official ×0.1 step at epoch 20 is never reached),
    last partial batch kept (a torch ``DataLoader`` default), augmentation as the dataset's recipe
    (crop + flip for CIFAR-like data, none for digits / MNIST).  ``steps`` replaces ``epochs`` by a
    number of optimiser steps.

    ``min_steps`` (default 400) keeps the paper's amount of optimisation when the clean set is small:
    10 epochs over the paper's 5,000 CIFAR-10 samples at batch 128 are ~390 steps, whereas 10 epochs
    over 144 digits are 20.  The run takes ``max(epochs x batches per epoch, min_steps)`` steps; on
    CIFAR-10 with 5,000 clean samples that is the paper's budget unchanged.  ``None`` disables it.
    The rule depends only on the size of the defender's own data.

    ``frozen_bn`` is the mode of the batch-norm layers *outside* the tuned modules: ``"eval"`` (default)
    keeps their running statistics, so everything outside the tuned modules stays bit-identical;
    ``"train"`` is the official SSFT code (the whole model in train mode): those layers re-estimate
    their running mean / variance on the clean samples while their weights (and every other frozen
    parameter) stay unchanged.  This matters after a suppression: the layers behind a removed skip see
    a different input distribution.
    """

    epochs: int = Field(10, ge=0)
    steps: int | None = Field(None, ge=1)
    min_steps: int | None = Field(400, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(128, ge=1)
    schedule: Literal["constant", "cosine", "step", "onecycle"] = "constant"
    augment: bool | None = None
    frozen_bn: Literal["eval", "train"] = "eval"


def tune_steps(n: int, p: TuneParams) -> int | None:
    """Optimiser steps of a fine-tuning run on ``n`` samples (``None``: plain epochs)."""
    if p.steps is not None:
        return p.steps
    if p.min_steps is None or p.epochs == 0:
        return None
    per_epoch = -(-n // min(p.batch_size, max(n, 1)))  # the last partial batch is kept
    return max(p.epochs * per_epoch, p.min_steps)


def tune_config(clean: ImageSet, p: TuneParams, *, seed: int, device: str) -> TrainConfig:
    """The :class:`TrainConfig` of a fine-tuning run (dataset recipe for augmentation only)."""
    from backdoorkit.pipeline import recipe_for

    return recipe_for(
        clean,
        epochs=p.epochs,
        steps=tune_steps(len(clean), p),
        lr=p.lr,
        momentum=p.momentum,
        nesterov=p.nesterov,
        weight_decay=p.weight_decay,
        batch_size=p.batch_size,
        schedule=p.schedule,
        augment=p.augment,
        drop_last=False,
        seed=seed,
        device=device,
    )


def _fit_frozen_bn_train(
    model: nn.Module,
    clean: ImageSet,
    cfg: TrainConfig,
    trainable: list[nn.Parameter],
    fit_kwargs: dict[str, Any],
) -> FitResult:
    """``fit`` with the whole model in train mode but only ``trainable`` in the optimiser: the frozen
    batch-norm layers update their running statistics, no frozen parameter moves (it is in no
    optimiser group; its gradients are dropped afterwards)."""
    if "optimizer" in fit_kwargs or "state" in fit_kwargs:
        raise ConfigError("frozen_bn='train' builds its own optimizer; do not pass optimizer= or state=")
    keep = {id(q) for q in trainable}

    def only_tuned(params: list[nn.Parameter]) -> Any:
        return make_optimizer([q for q in params if id(q) in keep], cfg)

    try:
        return fit(model, clean, cfg, optimizer=only_tuned, **fit_kwargs)
    finally:
        for q in model.parameters():
            if id(q) not in keep:
                q.grad = None


def head_name(model: nn.Module) -> str:
    """The classifier head: ``model.head_name`` or else the last ``nn.Linear``."""
    name = getattr(model, "head_name", None)
    if isinstance(name, str):
        return name
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"cannot find the classifier head of {type(model).__name__}")
    return linears[-1]


def finetune(
    model: nn.Module,
    clean: ImageSet,
    p: TuneParams,
    modules: Sequence[str] | None,
    *,
    seed: int,
    device: str,
    **fit_kwargs: Any,
) -> tuple[FitResult, dict[str, Any]]:
    """Fine-tune the parameters of ``modules`` (all when ``None``) of ``model`` in place on ``clean``.

    ``fit_kwargs`` go to :func:`backdoorkit.train.fit` (``loss_fn``, ``callbacks``, ``lr_schedule``,
    ``optimizer``, ``state``, ``augmentation``).  Returns the fit result and the summary a defense
    reports: the tuned modules, their parameter count, steps, final loss and seconds.
    """
    cfg = tune_config(clean, p, seed=seed, device=device)
    trainable = None if modules is None else parameters_of(model, list(modules))
    count = sum(q.numel() for q in (trainable if trainable is not None else model.parameters()))
    if trainable is not None and p.frozen_bn == "train":
        res = _fit_frozen_bn_train(model, clean, cfg, trainable, fit_kwargs)
    else:
        res = fit(model, clean, cfg, trainable=trainable, **fit_kwargs)
    return res, {
        "tuned": list(modules) if modules is not None else "all",
        "tuned_parameters": count,
        "steps": res.steps,
        "final_loss": res.losses[-1] if res.losses else None,
        "seconds": res.seconds,
    }
