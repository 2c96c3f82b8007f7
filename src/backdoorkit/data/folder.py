"""Generic image folders: one sub-folder per class, optionally split into ``train/`` and ``test/``.

Layouts::

    root/<class>/<image>                      one split, served as "train" only
    root/train/<class>/<image>                with root/test/<class>/<image> for "test"

Rules (all decided over the whole folder, both splits, so train and test always agree):

* images: ``.png``, ``.jpg``, ``.jpeg``, ``.ppm``, ``.bmp`` (any case); hidden files and folders
  (``.*``) are skipped, files directly in a split folder are ignored;
* classes: the sorted names of the class sub-folders that hold at least one image, in either split
  (label ``i`` is the ``i``-th name); a class may be missing from one split;
* channels: grey (1 channel) if every image is a grey-level image (Pillow modes ``1``, ``L``,
  ``LA``, ``I``, ``I;16``, ``F``), else RGB (3 channels; palette and alpha images are converted);
* size: ``image_size`` if given (square); else the native size when every image has the same one;
  else 32x32.  Resizing is bilinear with antialiasing, batched per distinct size;
* a folder without ``train/`` and ``test/`` is a training set only: asking it for ``"test"`` is a
  :class:`DataError` (split a holdout from it instead, e.g. with ``split_holdout``);
* horizontal flips are allowed (``hflip=True``; natural images are the common case);
* every image header is checked before anything is decoded (:mod:`.limits`): at most 4096 x 4096
  pixels and at most 100 x its file size + 1 MiB decoded.

Registered as the path format ``folder`` (tried last), so ``load_dataset("/path/to/folder", "train")``
works.  Counting (``backdoorkit datasets``) only lists files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backdoorkit.data import limits
from backdoorkit.data.imageset import ImageSet
from backdoorkit.data.loading import PathFormat, register_path_format
from backdoorkit.data.sources import SPLITS, LoadOptions
from backdoorkit.data.transforms import stack_images
from backdoorkit.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp")
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
DEFAULT_SIZE = 32


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and _visible(p) and p.is_file()


def split_dirs(root: Path) -> dict[str, Path]:
    """``{split: folder}``: ``train/`` and ``test/`` where present, else the root as ``"train"``."""
    split = {s: root / s for s in SPLITS if (root / s).is_dir()}
    return split or {"train": root}


def class_files(folder: Path) -> dict[str, list[Path]]:
    """``{class: sorted image files}`` for the class sub-folders of ``folder`` holding images."""
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p)):
        files = sorted(p for p in sub.iterdir() if _is_image(p))
        if files:
            out[sub.name] = files
    return out


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    """``(mode, (width, height))`` without decoding the pixels."""
    try:
        with Image.open(path) as im:
            bands = len(im.getbands())
            limits.check_image_header(*im.size, max(bands, 3), path.stat().st_size, str(path))
            return im.mode, im.size
    except DataError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


def _decode(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert(mode), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def scan(root: Path) -> tuple[dict[str, dict[str, list[Path]]], tuple[str, ...]]:
    """``({split: {class: files}}, classes)`` of an image folder; empty folders are an error."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    splits = {s: class_files(d) for s, d in split_dirs(root).items()}
    classes = tuple(sorted({c for per in splits.values() for c in per}))
    limits.check_class_count(len(classes), str(root))
    if not classes:
        raise DataError(
            f"{root}: no images found (expected one sub-folder per class holding "
            f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES)} files, optionally under train/ and test/)"
        )
    return splits, classes


def read_folder(path: Path, split: str, options: LoadOptions) -> ImageSet:
    """Read one split of an image folder (rules in the module docstring)."""
    root = Path(path)
    splits, classes = scan(root)
    if split not in splits:
        if (root / "train").is_dir() or (root / "test").is_dir():
            why = f"put its images in {root / split}/<class>/"
        else:
            why = "a folder of class sub-folders without train/ and test/ is a training set only"
        raise DataError(f"{root}: image folder has no {split}/ sub-folder; {why}")
    per_class = splits[split]
    files = [f for c in classes for f in per_class.get(c, [])]
    if not files:
        raise DataError(f"{root / split}: no images in the class sub-folders")
    labels = [i for i, c in enumerate(classes) for _ in per_class.get(c, [])]
    headers = [_header(f) for per in splits.values() for fs in per.values() for f in fs]
    mode = "L" if all(m in GREY_MODES for m, _ in headers) else "RGB"
    sizes = {s for _, s in headers}
    if options.image_size:
        size: int | None = options.image_size
    elif len(sizes) == 1:
        size = None
    else:
        size = DEFAULT_SIZE
    x = stack_images([_decode(f, mode) for f in files], size)
    y = torch.tensor(labels, dtype=torch.int64)
    return ImageSet(x, y, classes, f"{root.name}/{split}", hflip=True)


def count_folder(path: Path) -> dict[str, int]:
    """``{split: n}`` by listing the image files (nothing is decoded)."""
    splits, _ = scan(Path(path))
    return {s: sum(len(fs) for fs in per.values()) for s, per in splits.items()}


def sniff_folder(path: Path) -> bool:
    """A folder with at least one image in a class sub-folder (of ``train/``/``test/`` if present)."""
    if not path.is_dir():
        return False
    for folder in split_dirs(path).values():
        for sub in folder.iterdir():
            if sub.is_dir() and _visible(sub) and any(_is_image(p) for p in sub.iterdir()):
                return True
    return False


register_path_format(PathFormat("folder", sniff_folder, read_folder, count=count_folder, priority=90))
