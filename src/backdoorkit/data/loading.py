"""Resolve a dataset name or path and load one split.

``load_dataset(name, split, root=None)`` accepts

* a registered name (``digits``, ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``, ``gtsrb``) or
  one of its aliases, searched under the data roots in every layout its source understands, and
  as ``NAME.npz`` or ``NAME/NAME.npz``;
* a path to a dataset file or folder.  A path that sits where a named source would look for its
  data (``.../cifar-10-batches-py``, ``.../cifar-10-python.tar.gz``, ``.../MNIST/raw``, ``.../GTSRB``,
  ``.../mnist.npz`` ...) is read as that dataset (its class names, its flip flag); any other path is
  recognised by its format (:data:`PATH_FORMATS`: npz file, CIFAR batches or archive, IDX folder,
  GTSRB folder, image folder with one sub-folder per class).

Data roots, in order: the ``root`` argument, ``$BACKDOORKIT_DATA`` (``os.pathsep``-separated), then
``~/.cache/backdoorkit/data``, ``~/data``, ``./data``, ``/usr/share/backdoorkit`` and Debian's
dataset folder ``/usr/share/datasets`` (where ``dataset-fashion-mnist`` installs ``fashion-mnist/``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backdoorkit.data import limits
from backdoorkit.data.imageset import ImageSet
from backdoorkit.data.npz import count_npz, is_npz, read_npz
from backdoorkit.data.sources import DATASETS, SPLITS, DatasetSource, LoadOptions
from backdoorkit.errors import DataError, UnknownNameError

STANDARD_ROOTS = (
    "~/.cache/backdoorkit/data",
    "~/data",
    "./data",
    "/usr/share/backdoorkit",
    "/usr/share/datasets",
)


@dataclass(frozen=True)
class PathFormat:
    """A generic on-disk format recognised from a path the user gives (npz file, image folder ...).

    Attributes:
        name: short format name (``"npz"``, ``"cifar"``, ``"idx"``, ``"gtsrb"``, ``"folder"``).
        sniff: cheap test whether a path is in this format (no decoding).
        read: reads one split.
        count: optional cheap ``{split: n}`` without decoding images (used by :func:`available`).
        priority: formats are tried in increasing priority; catch-all formats (image folders) go last.
    """

    name: str
    sniff: Callable[[Path], bool]
    read: Callable[[Path, str, LoadOptions], ImageSet]
    count: Callable[[Path], dict[str, int]] | None = None
    priority: int = 50


PATH_FORMATS: list[PathFormat] = [
    PathFormat(
        "npz",
        is_npz,
        lambda p, split, opt: read_npz(p, split, opt),
        count=count_npz,
        priority=10,
    ),
]


def register_path_format(fmt: PathFormat) -> PathFormat:
    """Add a format recognised by :func:`load_path` (replacing one of the same name)."""
    PATH_FORMATS[:] = [f for f in PATH_FORMATS if f.name != fmt.name]
    PATH_FORMATS.append(fmt)
    PATH_FORMATS.sort(key=lambda f: f.priority)
    return fmt


def data_roots(root: str | Path | None = None) -> list[Path]:
    """The directories searched for named datasets, most specific first (existing ones only).

    An explicit ``root`` that is not an existing folder is a :class:`DataError`.
    """
    candidates: list[Path] = []
    if root is not None:
        given = Path(root).expanduser()
        if not given.is_dir():
            why = "is not a folder" if given.exists() else "does not exist"
            raise DataError(f"data root {given} {why}")
        candidates.append(given)
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


def resolve_name(name: str) -> DatasetSource | None:
    """The source registered under ``name`` or one of its aliases (case-insensitive), else ``None``."""
    key = name.lower()
    if key in DATASETS:
        return DATASETS.get(key)
    for entry in DATASETS.entries():
        if key in (a.lower() for a in entry.obj.aliases):
            return entry.obj
    return None


def _npz_candidates(root: Path, source: DatasetSource) -> list[Path]:
    out = []
    for name in (source.name, *source.aliases):
        out += [root / f"{name}.npz", root / name / f"{name}.npz"]
    return out


def locate(source: DatasetSource, roots: list[Path]) -> Path | None:
    """Where ``source`` would be read from under ``roots`` (``None`` if absent)."""
    for root in roots:
        for cand in _npz_candidates(root, source):
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


def checked(data: ImageSet, where: Path | str, split: str) -> ImageSet:
    """A freshly read split after :func:`.limits.check_loaded` (non-empty, big enough, distinct classes)."""
    limits.check_loaded(tuple(data.x.shape), data.classes, str(where), split)
    return data


def read_located(source: DatasetSource, path: Path, split: str, options: LoadOptions) -> ImageSet:
    """Read one split of ``source`` from the path :func:`locate` returned."""
    if is_npz(path):
        return checked(read_npz(path, split, options, name=source.name, hflip=source.hflip), path, split)
    if source.read is None:
        raise DataError(f"dataset {source.name!r} cannot be read from {path}")
    return checked(source.read(path, split, options), path, split)


def load_dataset(
    name: str | Path,
    split: str = "train",
    root: str | Path | None = None,
    *,
    image_size: int | None = None,
) -> ImageSet:
    """Load one split (``"train"`` or ``"test"``) of a dataset by registered name or by path.

    ``image_size`` resizes to a square side; ``None`` keeps each source's native size (GTSRB and
    image folders of mixed sizes: 32).
    """
    _check_split(split)
    if image_size is not None and image_size < 1:
        raise DataError(f"image size must be positive, got {image_size}")
    options = LoadOptions(image_size=image_size)
    text = str(name)
    source = resolve_name(text) if not isinstance(name, Path) else None
    roots = data_roots(root)  # checks an explicit root even where the source is built in
    if source is not None:
        if source.builtin is not None:
            return source.builtin(split, options)
        path = locate(source, roots)
        if path is None:
            searched = ", ".join(str(r) for r in roots) or "none"
            raise DataError(
                f"dataset {source.name!r} not found under the data roots ({searched}); "
                f"pass --data-root or set BACKDOORKIT_DATA"
            )
        return read_located(source, path, split, options)
    path = Path(text).expanduser()
    if path.exists():
        return load_path(path, split, options)
    if isinstance(name, Path) or os.sep in text or text.endswith((".npz", ".gz", ".tar")):
        raise DataError(f"{path}: no such file or directory")
    raise UnknownNameError(
        f"unknown dataset {text!r}; registered: {', '.join(DATASETS.names())} (or give a path)"
    )


def identify(path: Path) -> tuple[DatasetSource, Path] | None:
    """The named source whose standard location ``path`` is (or contains), with the path to read.

    ``path`` names a source when the source, searching the folder one or two levels above ``path``,
    finds ``path`` itself or something inside it (``/d/cifar10`` holding ``cifar-10-batches-py``).
    """
    path = path.resolve()
    ancestors = [path.parent, path.parent.parent]
    for entry in DATASETS.entries():
        src = entry.obj
        if src.builtin is not None:
            continue
        for anc in ancestors:
            found = locate(src, [anc])
            if found is not None and (found == path or path in found.parents):
                return src, found
    return None


def path_format(path: Path) -> PathFormat | None:
    """The first registered format that recognises ``path``."""
    for fmt in PATH_FORMATS:
        if fmt.sniff(path):
            return fmt
    return None


def load_path(path: Path, split: str, options: LoadOptions) -> ImageSet:
    """Read a dataset from an explicit path, recognising its format."""
    _check_split(split)
    path = Path(path).resolve()
    named = identify(path)
    if named is not None:
        return read_located(named[0], named[1], split, options)
    fmt = path_format(path)
    if fmt is None:
        kinds = ", ".join(f.name for f in PATH_FORMATS)
        raise DataError(f"{path}: not a dataset in any supported format ({kinds})")
    return checked(fmt.read(path, split, options), path, split)


def count_splits(source: DatasetSource, path: Path | None, root: str | Path | None = None) -> dict[str, int]:
    """``{split: n}`` for a source found at ``path``, cheaply where its format can count.

    Formats with a ``count`` (npz headers, IDX headers, CSV rows, file counts, CIFAR labels) avoid
    decoding images; anything else is loaded.  A split that is absent is missing from the result.
    """
    if path is not None:
        fmt = path_format(path)
        if fmt is not None and fmt.count is not None:
            return fmt.count(path)
    out = {}
    for split in SPLITS:
        try:
            out[split] = len(load_dataset(source.name, split, root))
        except DataError:
            if split == SPLITS[0]:
                raise
    return out


def available(root: str | Path | None = None) -> list[tuple[str, str, int | None, int | None]]:
    """``(name, where, n_train, n_test)`` for every registered dataset that can be loaded now.

    Sizes come from headers and labels where the format allows (see :func:`count_splits`); a dataset
    whose files are present but unreadable is listed with ``where`` saying why and no sizes.
    """
    rows: list[tuple[str, str, int | None, int | None]] = []
    roots = data_roots(root)
    for entry in DATASETS.entries():
        src = entry.obj
        found: Path | None = None
        if src.builtin is not None:
            where = "built in"
        else:
            found = locate(src, roots)
            if found is None:
                continue
            where = str(found)
        try:
            counts = count_splits(src, found, root)
        except DataError as exc:
            rows.append((src.name, f"{where} (unreadable: {exc})", None, None))
            continue
        rows.append((src.name, where, counts.get("train"), counts.get("test")))
    return rows
