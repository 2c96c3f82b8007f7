"""What every backdoorkit model shares: input normalisation as the first layer, a named head, named
feature stages and blocks, the split into stem + head, and the recipe (architecture or wrapper name,
arguments, children) needed to rebuild it from a checkpoint.

A classifier is written as a *chain*: :meth:`ImageClassifier.chain` lists ``(module path, module)``
pairs whose composition is the forward pass (normalisation first, the head last).  ``forward``,
``features``, ``feature_maps``, :meth:`~ImageClassifier.forward_stages` and
:meth:`~ImageClassifier.split` all run that one chain, so a split model computes exactly what the
whole one does.
"""

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
    """What rebuilds a model: a registered architecture (or wrapper) name, its keyword arguments and,
    for wrappers and composite models, the specs of its child models by argument name."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    children: dict[str, ModelSpec] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written into checkpoint sidecars (``children`` only when there are any)."""
        out: dict[str, Any] = {"arch": self.arch, "kwargs": dict(self.kwargs)}
        if self.children:
            out["children"] = {k: v.to_dict() for k, v in self.children.items()}
        return out


def default_stats(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return (0.5,) * in_channels, (0.5,) * in_channels


class ImageClassifier(nn.Module):
    """Base of our classifiers.

    Subclasses build ``self.normalize`` (first layer) and ``self.fc`` (the linear head) and implement
    :meth:`chain`.  ``stage_names`` lists the modules whose outputs are the network's main feature
    stages (used by attention distillation and pruning); :meth:`block_names` the finer split points
    (every residual block).  ``pool_name`` is the chain entry that turns feature maps into the
    penultimate vector.
    """

    stage_names: tuple[str, ...] = ()
    head_name: str = "fc"
    pool_name: str = "pool"
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

    chain_names: tuple[str, ...] = ()
    """The names of :meth:`chain`'s modules in order (``"*stages"`` expands to ``stage_names``)."""

    def chain(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` pairs whose composition is the forward pass, the head last."""
        names: list[str] = []
        for n in self.chain_names:
            names += list(self.stage_names) if n == "*stages" else [n]
        return [(n, getattr(self, n)) for n in names]

    def _pooled_head(self, cin: int, num_classes: int, *, preact: bool = False) -> None:
        """The end every CNN here shares: (BN + ReLU for pre-activation networks), global average
        pooling, flatten, the linear classifier ``fc``."""
        if preact:
            self.bn = nn.BatchNorm2d(cin)
            self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(cin, num_classes)
        self.feature_dim = cin

    def _run(self, x: torch.Tensor, stop: str | None = None) -> torch.Tensor:
        """Apply the chain up to (excluding) the entry ``stop``; the whole chain when ``None``."""
        for name, module in self.chain():
            if name == stop:
                return x
            x = module(x)
        if stop is not None:
            raise ValueError(f"{type(self).__name__} has no chain entry {stop!r}")
        return x

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature maps (tokens for a ViT), before pooling."""
        return self._run(x, self.pool_name)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate vector (the head's input)."""
        return self._run(x, self.head_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)

    def head(self) -> nn.Module:
        return self.get_submodule(self.head_name)

    def block_names(self) -> list[str]:
        """The ordered split points: every residual block (``layer1.0`` ... ``layer4.1``; ``blocks.0``
        ...), or the stages of a model without skips (VGG)."""
        from backdoorkit.models import stages

        return stages.block_names(self)

    def forward_stages(self, x: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Outputs of the named stages / blocks / submodules (default :attr:`stage_names`) on ``x``;
        the forward pass stops once all of them are computed."""
        from backdoorkit.models import stages

        return stages.forward_stages(self, x, names)

    def split(self, at: str) -> tuple[nn.Module, nn.Module]:
        """``(stem, head)``: the stem is everything up to and including block ``at``, the head the rest
        (pooling and classifier included); ``head(stem(x))`` equals ``self(x)`` and both share this
        model's parameters.  ``Composite(stem, head)`` re-assembles them into one saveable model."""
        from backdoorkit.models import stages

        return stages.split(self, at)
