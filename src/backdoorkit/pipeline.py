"""Glue used by the CLI, the experiment runner and attacks that need an attacker model:
build a registered model fitted to a dataset's shape and statistics, and train it with the
dataset's recipe.

* :func:`train_victim` is the one way a victim (or clean) model is trained: with an attack and its
  :class:`~backdoorkit.attacks.base.PoisonedSet` it calls :meth:`Attack.train_victim
  <backdoorkit.attacks.base.Attack.train_victim>` (so attacks that control training are honoured
  everywhere), without one it fits the fresh model on the data.
* :func:`train_model` is the convenience wrapper: architecture name + data + seed in, ``(model,
  seconds)`` out.

Recipes (the defaults a user gets without flags; every field can be overridden):

* ``digits`` (embedded, 1,438 training images): 10 epochs, lr 0.05, batch 128, no augmentation (the digits
  are centred and tiny patch triggers get cropped away by random crops in so short a run).  Eight epochs
  (the recipe until 2026-12) left one training seed of three short of convergence on an AVX-512 CPU
  (BA 96 %, BadNets-grid ASR 4 %, l0-invisible 22 %); at ten, all six runs measured reach ASR >= 96 %.
* ``mnist`` / ``fashion_mnist``: 8 epochs, lr 0.05, batch 256, no augmentation.
* anything else (CIFAR, GTSRB, folders): 30 epochs, lr 0.1, batch 256, crop (+ flip) augmentation,
  one-cycle SGD: a fast recipe, not the papers' 200 epochs.

The ``fast`` schedule (:data:`FAST_SCHEDULE`, ``recipe_for(data, recipe="fast")``) is the short
full-scale recipe of the fast CIFAR-10 trainers (airbench / Page's "How to train your ResNet"): a
standard ResNet-18 reaches ~93.4 % on CIFAR-10 in 26 epochs with batch 500, Nesterov SGD lr 0.2,
weight decay 5e-4, a triangular rate peaking at 20 % of the steps (our one-cycle with ``warmup=0.2``:
from lr/25 up, then linearly to 0) and flip + 4-pixel translation (the standard random crop with
1/8-side zero padding).  No label smoothing and no test-time augmentation: both change ASR and the
signals detectors read.  Presets (:mod:`backdoorkit.presets`) name it as their ``fast`` schedule.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.errors import ConfigError
from backdoorkit.models.registry import build_model, model_args
from backdoorkit.seeding import seeded
from backdoorkit.train import TrainConfig, fit, train_config

if TYPE_CHECKING:
    from backdoorkit.attacks.base import Attack, PoisonedSet

RECIPES: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 10, "lr": 0.05, "batch_size": 128, "augment": False},
    "mnist": {"epochs": 8, "lr": 0.05, "batch_size": 256, "augment": False},
    "fashion_mnist": {"epochs": 8, "lr": 0.05, "batch_size": 256, "augment": False},
    "default": {"epochs": 30, "lr": 0.1, "batch_size": 256, "augment": True},
}


FAST_SCHEDULE: dict[str, Any] = {
    "epochs": 26,
    "batch_size": 500,
    "optimizer": "sgd",
    "lr": 0.2,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "schedule": "onecycle",
    "warmup": 0.2,
    "label_smoothing": 0.0,
    "augment": True,
}
"""The ``fast`` full-scale schedule (TrainConfig fields; see the module docstring)."""

SCHEDULES: dict[str, dict[str, Any]] = {"fast": FAST_SCHEDULE}


def dataset_key(data: ImageSet) -> str:
    return data.name.split("/")[0].split("+")[0]


def recipe_for(data: ImageSet, *, recipe: str | None = None, **overrides: Any) -> TrainConfig:
    """The dataset's default :class:`TrainConfig` (or the named ``recipe``, e.g. ``"fast"``), with
    ``overrides`` (``None`` values ignored; ``schedule`` here is the TrainConfig field)."""
    if recipe is not None and recipe not in SCHEDULES:
        raise ConfigError(f"unknown training recipe {recipe!r} ({', '.join(SCHEDULES)})")
    base = dict(SCHEDULES[recipe] if recipe else RECIPES.get(dataset_key(data), RECIPES["default"]))
    base.update({k: v for k, v in overrides.items() if v is not None})
    return train_config(**base)


def make_model(
    arch: str, data: ImageSet, *, width: int | None = None, seed: int = 0, **kwargs: Any
) -> nn.Module:
    """Build ``arch`` for ``data``: classes, channels, normalisation statistics (and image size for ViTs).

    Initialisation is seeded with ``seed`` so the same call gives the same weights.
    """
    mean, std = data.channel_stats()
    args = model_args(arch)
    if width is not None:
        kwargs["width"] = width
    if "image_size" in args and "image_size" not in kwargs:
        kwargs["image_size"] = data.image_shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(
            arch, num_classes=data.num_classes, in_channels=data.channels, mean=mean, std=std, **kwargs
        )
    model.classes = data.classes
    return model


def train_victim(
    attack: Attack | None,
    model_factory: Callable[[], nn.Module],
    poisoned: PoisonedSet | ImageSet,
    config: TrainConfig,
) -> nn.Module:
    """Train a model for ``poisoned`` and return it in eval mode.

    With an attack and a :class:`~backdoorkit.attacks.base.PoisonedSet`: ``attack.train_victim(
    model_factory, poisoned, config)`` (default: ``prepare_model`` + :func:`~backdoorkit.train.fit`;
    attacks that control training override it).  With ``attack=None`` or a plain
    :class:`ImageSet`: clean training, ``fit(model_factory(), data, config)``.  ``config`` is used as
    given (its ``seed`` included), and torch's global generators are seeded with it for the call
    (:func:`backdoorkit.seeding.seeded`), so what an attack draws outside ``fit`` is reproducible.
    """
    with seeded(config.seed):
        if attack is not None and not isinstance(poisoned, ImageSet):
            return attack.train_victim(model_factory, poisoned, config)
        data = poisoned if isinstance(poisoned, ImageSet) else poisoned.data
        model = model_factory()
        fit(model, data, config)
        return model.eval()


def train_model(
    arch: str,
    data: PoisonedSet | ImageSet,
    config: TrainConfig | None = None,
    *,
    seed: int = 0,
    width: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    init: nn.Module | None = None,
    attack: Attack | None = None,
) -> tuple[nn.Module, float]:
    """Build ``arch`` for the data (or take ``init``) and train it through :func:`train_victim`.

    ``data``: a clean :class:`ImageSet`, or ``attack``'s :class:`PoisonedSet` for a victim model.
    ``config`` defaults to the dataset's recipe; its seed is replaced by ``seed``, which also seeds
    the initialisation.  Returns ``(model in eval mode, training wall seconds)``.
    """
    images = data if isinstance(data, ImageSet) else data.data
    cfg = (config or recipe_for(images)).model_copy(update={"seed": seed})

    def factory() -> nn.Module:
        if init is not None:
            return init
        return make_model(arch, images, width=width, seed=seed, **(model_kwargs or {}))

    start = time.perf_counter()
    model = train_victim(attack, factory, data, cfg)
    return model, time.perf_counter() - start
