"""What every backdoorkit model shares: input normalisation as the first layer, a named head, named
feature stages, and the recipe (architecture name + arguments) needed to rebuild it from a checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; inputs are pixels in ``[0, 1]``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


@dataclass(frozen=True)
class ModelSpec:
    """The registered architecture name and the keyword arguments that rebuild a model."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def default_stats(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return (0.5,) * in_channels, (0.5,) * in_channels


class ImageClassifier(nn.Module):
    """Base of our classifiers.

    Subclasses build ``self.normalize`` (first layer), ``self.fc`` (the linear head) and implement
    :meth:`features` (pixels -> penultimate vector).  ``stage_names`` lists the modules whose outputs
    are the network's main feature stages (used by attention distillation, pruning and T&R splits).
    """

    stage_names: tuple[str, ...] = ()
    head_name: str = "fc"
    spec: ModelSpec | None = None

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        dm, ds = default_stats(in_channels)
        mean = tuple(mean) if mean is not None else dm
        std = tuple(std) if std is not None else ds
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError("mean/std must have one value per input channel")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.normalize = Normalize(mean, std)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def head(self) -> nn.Module:
        return self.get_submodule(self.head_name)
