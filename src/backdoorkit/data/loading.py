"""Resolve a dataset name or path and load one split.

``load_dataset(name, split, root=None)`` accepts

* a registered name (``digits``, ``cifar10``, ``mnist`` ...), searched under the data roots in every
  layout its source understands, including ``NAME.npz`` and ``NAME/NAME.npz``;
* a path to a dataset file or folder in any supported format.

Data roots, in order: the ``root`` argument, ``$BACKDOORKIT_DATA`` (``os.pathsep``-separated), then
``~/.cache/backdoorkit/data``, ``~/data``, ``./data`` and the Debian dataset folders under
``/usr/share``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backdoorkit.data.imageset import ImageSet
from backdoorkit.data.npz import read_npz
from backdoorkit.data.sources import DATASETS, SPLITS, DatasetSource, LoadOptions
from backdoorkit.errors import DataError, UnknownNameError

STANDARD_ROOTS = (
    "~/.cache/backdoorkit/data",
    "~/data",
    "./data",
    "/usr/share/backdoorkit",
    "/usr/share",
)


@dataclass(frozen=True)
class PathFormat:
    """A generic on-disk format recognised from a path the user gives (npz file, image folder ...)."""

    name: str
    sniff: Callable[[Path], bool]
    read: Callable[[Path, str, LoadOptions], ImageSet]


PATH_FORMATS: list[PathFormat] = [
    PathFormat(
        "npz",
        lambda p: p.is_file() and p.suffix == ".npz",
        lambda p, split, opt: read_npz(p, split, opt),
    ),
]


def register_path_format(fmt: PathFormat) -> None:
    PATH_FORMATS.append(fmt)


def data_roots(root: str | Path | None = None) -> list[Path]:
    """The directories searched for named datasets, most specific first (existing ones only)."""
    candidates: list[Path] = []
    if root is not None:
        candidates.append(Path(root).expanduser())
    env = os.environ.get("BACKDOORKIT_DATA")
    if env:
        candidates.extend(Path(p).expanduser() for p in env.split(os.pathsep) if p)
    candidates.extend(Path(p).expanduser() for p in STANDARD_ROOTS)
    seen: set[Path] = set()
    roots = []
    for c in candidates:
        try:
            r = c.resolve()
        except OSError:
            continue
        if r not in seen and r.is_dir():
            seen.add(r)
            roots.append(r)
    return roots


def _npz_candidates(root: Path, name: str) -> list[Path]:
    return [root / f"{name}.npz", root / name / f"{name}.npz"]


def locate(source: DatasetSource, roots: list[Path]) -> Path | None:
    """Where ``source`` would be read from under ``roots`` (``None`` if absent)."""
    for root in roots:
        for cand in _npz_candidates(root, source.name):
            if cand.is_file():
                return cand
        if source.locate is not None:
            found = source.locate(root)
            if found is not None:
                return found
    return None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def read_located(source: DatasetSource, path: Path, split: str, options: LoadOptions) -> ImageSet:
    if path.suffix == ".npz":
        return read_npz(path, split, options, name=source.name, hflip=source.hflip)
    if source.read is None:
        raise DataError(f"dataset {source.name!r} cannot be read from {path}")
    return source.read(path, split, options)


def load_dataset(
    name: str | Path,
    split: str = "train",
    root: str | Path | None = None,
    *,
    image_size: int | None = None,
) -> ImageSet:
    """Load one split of a dataset by registered name or by path."""
    _check_split(split)
    options = LoadOptions(image_size=image_size)
    text = str(name)
    if text.lower() in DATASETS:
        source = DATASETS.get(text)
        if source.builtin is not None:
            return source.builtin(split, options)
        path = locate(source, data_roots(root))
        if path is None:
            searched = ", ".join(str(r) for r in data_roots(root)) or "none"
            raise DataError(
                f"dataset {source.name!r} not found under the data roots ({searched}); "
                f"pass --data-root or set BACKDOORKIT_DATA"
            )
        return read_located(source, path, split, options)
    path = Path(text).expanduser()
    if path.exists():
        return load_path(path, split, options)
    if os.sep in text or text.endswith((".npz", ".gz")):
        raise DataError(f"{path}: no such file or directory")
    raise UnknownNameError(
        f"unknown dataset {text!r}; registered: {', '.join(DATASETS.names())} (or give a path)"
    )


def load_path(path: Path, split: str, options: LoadOptions) -> ImageSet:
    """Read a dataset from an explicit path, recognising its format."""
    for source in DATASETS.entries():
        src = source.obj
        if src.locate is not None and src.read is not None:
            found = src.locate(path)
            if found is not None and (found == path or found.parent == path or path in found.parents):
                return src.read(found, split, options)
    for fmt in PATH_FORMATS:
        if fmt.sniff(path):
            return fmt.read(path, split, options)
    raise DataError(f"{path}: not a dataset in any supported format")


def available(root: str | Path | None = None) -> list[tuple[str, str, int | None, int | None]]:
    """``(name, where, n_train, n_test)`` for every registered dataset that can be loaded now."""
    rows = []
    roots = data_roots(root)
    for entry in DATASETS.entries():
        src = entry.obj
        if src.builtin is not None:
            where: str = "built in"
        else:
            found = locate(src, roots)
            if found is None:
                continue
            where = str(found)
        try:
            n_train = len(load_dataset(src.name, "train", root))
            n_test = len(load_dataset(src.name, "test", root))
        except DataError as exc:
            rows.append((src.name, f"{where} (unreadable: {exc})", None, None))
            continue
        rows.append((src.name, where, n_train, n_test))
    return rows
