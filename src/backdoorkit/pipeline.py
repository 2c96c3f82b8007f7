"""Glue used by the CLI, the experiment runner and attacks that need an attacker model:
build a registered model fitted to a dataset's shape and statistics, and train it with the
dataset's recipe.

Recipes (the defaults a user gets without flags; every field can be overridden):

* ``digits`` (embedded, 1,438 training images): 8 epochs, lr 0.05, batch 128, no augmentation (the digits are
  centred and tiny patch triggers get cropped away by random crops in so short a run).
* ``mnist`` / ``fashion_mnist``: 8 epochs, lr 0.05, batch 256, no augmentation.
* anything else (CIFAR, GTSRB, folders): 30 epochs, lr 0.1, batch 256, crop (+ flip) augmentation,
  one-cycle SGD: a fast recipe, not the papers' 200 epochs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from backdoorkit.data.imageset import ImageSet
from backdoorkit.models.registry import build_model, model_args
from backdoorkit.train import FitResult, TrainConfig, fit, train_config

RECIPES: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 8, "lr": 0.05, "batch_size": 128, "augment": False},
    "mnist": {"epochs": 8, "lr": 0.05, "batch_size": 256, "augment": False},
    "fashion_mnist": {"epochs": 8, "lr": 0.05, "batch_size": 256, "augment": False},
    "default": {"epochs": 30, "lr": 0.1, "batch_size": 256, "augment": True},
}


def dataset_key(data: ImageSet) -> str:
    return data.name.split("/")[0].split("+")[0]


def recipe_for(data: ImageSet, **overrides: Any) -> TrainConfig:
    """The dataset's default :class:`TrainConfig`, with ``overrides`` (``None`` values ignored)."""
    base = dict(RECIPES.get(dataset_key(data), RECIPES["default"]))
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


def train_model(
    arch: str,
    data: ImageSet,
    config: TrainConfig | None = None,
    *,
    seed: int = 0,
    width: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    init: nn.Module | None = None,
    prepare: Any = None,
) -> tuple[nn.Module, FitResult]:
    """Build (or take ``init``) and train a model on ``data``; returns ``(model, fit result)``.

    ``prepare`` is an optional callable applied to the fresh model before training (an attack's
    ``prepare_model`` for attacks on the structure).
    """
    cfg = config or recipe_for(data)
    if init is not None:
        model = init
    else:
        model = make_model(arch, data, width=width, seed=seed, **(model_kwargs or {}))
    if prepare is not None:
        model = prepare(model)
    result = fit(model, data, cfg.model_copy(update={"seed": seed}))
    return model, result
