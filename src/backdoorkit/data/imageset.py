"""The in-memory image set every component passes around.

An :class:`ImageSet` holds a whole split as one uint8 tensor ``x`` of shape ``[N, C, H, W]`` and one
int64 label tensor ``y`` of shape ``[N]``.  Batches are slices of these tensors (never per-sample
Python objects), and the whole set can live on the GPU.  Models and attacks see float pixels in
``[0, 1]`` obtained with :meth:`ImageSet.pixels` or :func:`to_pixels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from backdoorkit.errors import DataError


@dataclass(frozen=True, eq=False)
class ImageSet:
    """A labelled image split held in memory.

    Attributes:
        x: uint8 images ``[N, C, H, W]``.
        y: int64 labels ``[N]`` in ``[0, len(classes))``.
        classes: class names; their count defines the label range.
        name: a short name such as ``"cifar10/train"``.
        hflip: whether a horizontal flip keeps an image's meaning (False for digits, traffic signs).
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    name: str = "images"
    hflip: bool = True
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise DataError(f"{self.name}: x and y must be torch tensors")
        if x.dtype != torch.uint8:
            raise DataError(f"{self.name}: images must be uint8, got {x.dtype}")
        if x.dim() != 4:
            raise DataError(f"{self.name}: images must be [N, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] not in (1, 3):
            raise DataError(f"{self.name}: images must have 1 or 3 channels, got {x.shape[1]}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise DataError(
                f"{self.name}: labels must be [N] with N={x.shape[0]}, got shape {tuple(y.shape)}"
            )
        if y.dtype != torch.int64:
            object.__setattr__(self, "y", y.to(torch.int64))
        if not self.classes:
            raise DataError(f"{self.name}: no class names")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if y.numel():
            lo, hi = int(self.y.min()), int(self.y.max())
            if lo < 0 or hi >= len(self.classes):
                raise DataError(
                    f"{self.name}: label {lo if lo < 0 else hi} out of range [0, {len(self.classes)})"
                )

    # ------------------------------------------------------------------ basic properties
    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return f"ImageSet({self.name!r}, n={len(self)}, {c}x{h}x{w}, classes={self.num_classes})"

    # ------------------------------------------------------------------ derived sets
    def subset(self, index: torch.Tensor | Sequence[int], name: str | None = None) -> ImageSet:
        """Rows selected by an index or boolean mask tensor."""
        idx = torch.as_tensor(index, device=self.x.device)
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise DataError(f"{self.name}: boolean mask of shape {tuple(idx.shape)} for {len(self)} rows")
        else:
            idx = idx.long()
        return replace(self, x=self.x[idx], y=self.y[idx], name=name or self.name, meta=self._meta())

    def with_data(self, x: torch.Tensor, y: torch.Tensor | None = None, name: str | None = None) -> ImageSet:
        """Same classes and flags with new images (and labels)."""
        return replace(self, x=x, y=self.y if y is None else y, name=name or self.name, meta=self._meta())

    def _meta(self) -> dict[str, object]:
        """Metadata for a derived set: user keys are kept, cached digests (``_*``) are not."""
        return {k: v for k, v in self.meta.items() if not k.startswith("_")}

    def to(self, device: torch.device | str) -> ImageSet:
        device = torch.device(device)
        if self.x.device == device:
            return self
        return replace(self, x=self.x.to(device), y=self.y.to(device))

    def pixels(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Float images in ``[0, 1]`` (optionally of selected rows)."""
        x = self.x if index is None else self.x[index]
        return to_pixels(x)

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.y.cpu(), minlength=self.num_classes)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the pixels in ``[0, 1]`` (computed in chunks)."""
        c = self.channels
        total = torch.zeros(c, dtype=torch.float64)
        total_sq = torch.zeros(c, dtype=torch.float64)
        n = 0
        for start in range(0, len(self), 4096):
            chunk = self.x[start : start + 4096].to(torch.float64).cpu() / 255.0
            total += chunk.sum(dim=(0, 2, 3))
            total_sq += (chunk**2).sum(dim=(0, 2, 3))
            n += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
        mean = total / max(n, 1)
        std = (total_sq / max(n, 1) - mean**2).clamp_min(1e-12).sqrt()
        return tuple(float(v) for v in mean), tuple(max(float(v), 1e-3) for v in std)


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[0, 1]``; float input is returned as float32."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Float pixels in ``[0, 1]`` -> uint8, rounding to the nearest grey level (as an image file would)."""
    return x.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def concat(sets: Sequence[ImageSet], name: str | None = None) -> ImageSet:
    """Concatenate sets that share classes and image shape."""
    if not sets:
        raise DataError("nothing to concatenate")
    first = sets[0]
    for s in sets[1:]:
        if s.classes != first.classes or s.image_shape != first.image_shape:
            raise DataError(f"cannot concatenate {s!r} with {first!r}: classes or shape differ")
    return replace(
        first,
        x=torch.cat([s.x for s in sets]),
        y=torch.cat([s.y for s in sets]),
        name=name or first.name,
        meta=first._meta(),
    )
