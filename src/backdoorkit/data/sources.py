"""Dataset sources: how each registered dataset is found on disk and read into an :class:`ImageSet`.

A source is registered by name in :data:`DATASETS`.  ``locate(root)`` looks for the dataset under one
data root in any layout the source understands and returns the path it would read (or ``None``);
``read(path, split, options)`` reads one split from there.  Built-in sources (scikit-learn's digits)
need no files and implement ``builtin(split, options)`` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backdoorkit.data.imageset import ImageSet
from backdoorkit.registry import Registry

SPLITS = ("train", "test")


@dataclass(frozen=True)
class LoadOptions:
    """Options that change how images are read.

    Attributes:
        image_size: side length to resize to (GTSRB, image folders); ``None`` keeps the source's
            native size where it has one, else 32.
    """

    image_size: int | None = None


@dataclass(frozen=True)
class DatasetSource:
    """How to find and read one dataset."""

    name: str
    description: str
    hflip: bool = True
    locate: Callable[[Path], Path | None] | None = None
    read: Callable[[Path, str, LoadOptions], ImageSet] | None = None
    builtin: Callable[[str, LoadOptions], ImageSet] | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)


DATASETS: Registry[DatasetSource] = Registry("dataset")


def register_source(source: DatasetSource) -> DatasetSource:
    DATASETS.add(source.name, source, summary=source.description)
    return source
