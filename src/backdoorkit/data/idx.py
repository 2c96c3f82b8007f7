"""MNIST and Fashion-MNIST from IDX files (LeCun et al. 1998; Xiao, Rasul & Vollgraf 2017).

An IDX file is a big-endian header followed by raw values: a 4-byte magic number (two zero bytes,
a type code, 0x08 = unsigned byte, and the number of dimensions), one 4-byte size per dimension,
then the values.  Images: magic ``0x00000803`` and sizes ``N, 28, 28``; labels: magic
``0x00000801`` and size ``N``.  The payload must be exactly the product of the sizes (a shorter
file is truncated, a longer one malformed).

A split lives in a folder as ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (test:
``t10k-...``), gzipped (``.gz``, detected from the content) or raw, also spelled
``train-images.idx3-ubyte``.  Images keep their native 28x28 unless an image size is given.

Resource bounds (:mod:`.limits`): the header is read first and the size it declares is checked
before the payload is read: against the file itself for a raw file, and for a gzipped file against
``100 x the file size + 1 MiB``; decompression then stops one byte past the declared size, so a
stream that inflates further is refused without being inflated (the gzip trailer's ISIZE is not
trusted: it is modulo 2**32 and a crafted or truncated stream can state anything).
Labels are one byte, so a generic folder has at most 256 classes.

Named sources, searched under each data root:

* ``mnist`` (digits ``"0"`` ... ``"9"``, no horizontal flips) in ``mnist/``, ``MNIST/raw/``,
  ``MNIST/`` or ``mnist/raw/``;
* ``fashion_mnist`` (the ten Fashion-MNIST class names, flips allowed) in ``fashion-mnist/``,
  ``fashion_mnist/``, ``FashionMNIST/raw/``, ``FashionMNIST/``, ``fashion-mnist/data/fashion/``
  (the upstream repository).  Debian's ``dataset-fashion-mnist`` package installs the four ``.gz``
  files in ``/usr/share/datasets/fashion-mnist/``, which is a standard data root's ``fashion-mnist/``.

Any other folder holding IDX files is read as a generic set named after the folder, classes
``"0"`` ... (at least ten), no horizontal flips.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from backdoorkit.data import limits
from backdoorkit.data.imageset import ImageSet
from backdoorkit.data.loading import PathFormat, register_path_format
from backdoorkit.data.sources import DatasetSource, LoadOptions, register_source
from backdoorkit.data.transforms import resize_uint8
from backdoorkit.errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
PREFIX = {"train": "train", "test": "t10k"}
_GZIP_MAGIC = b"\x1f\x8b"


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _open(path: Path, limit: int) -> bytes:
    """The first ``limit`` (decompressed) bytes of a raw or gzipped file."""
    try:
        opener = gzip.open if _is_gzip(path) else open
        with opener(path, "rb") as f:  # type: ignore[operator]
            return f.read(limit)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def parse_header(raw: bytes, where: str, magic: int) -> tuple[tuple[int, ...], int]:
    """``(sizes, header length)`` of an IDX file, checking the magic number."""
    if len(raw) < 4:
        raise DataError(f"{where}: truncated IDX file ({len(raw)} bytes, no header)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise DataError(f"{where}: wrong magic number 0x{found:08x}, expected 0x{magic:08x} (IDX {kind})")
    ndim = magic & 0xFF
    end = 4 + 4 * ndim
    if len(raw) < end:
        raise DataError(f"{where}: truncated IDX header ({len(raw)} of {end} bytes)")
    sizes = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return sizes, end


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of an IDX file (``[N, H, W]`` for images, ``[N]`` for labels).

    The declared sizes are checked against the file (and the inflation budget) before the payload
    is read; at most one byte past the declared payload is ever decompressed.
    """
    ndim = magic & 0xFF
    head = _open(path, 4 + 4 * ndim)
    sizes, start = parse_header(head, str(path), magic)
    expected = math.prod(sizes)
    try:
        size = path.stat().st_size
        gz = _is_gzip(path)
        if gz:
            limits.check_inflation(start + expected, size, str(path), f"IDX sizes {sizes}")
        elif start + expected > size:
            raise DataError(
                f"{path}: truncated IDX file: {size - start} of {expected} data bytes for sizes {sizes}"
            )
        opener = gzip.open if gz else open
        with opener(path, "rb") as f:  # type: ignore[operator]
            raw = f.read(start + expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    got = len(raw) - start
    if got < expected:
        raise DataError(f"{path}: truncated IDX file: {got} of {expected} data bytes for sizes {sizes}")
    if got > expected:
        more = "bytes" if gz else f"{size - start - expected} bytes"
        raise DataError(f"{path}: {more} after the data for sizes {sizes}")
    return np.frombuffer(raw, dtype=np.uint8, offset=start, count=expected).reshape(sizes)


def idx_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    """``(images, labels)`` files of a split in ``folder`` (any accepted spelling), else ``None``."""
    found = []
    for kind, dims in (("images", 3), ("labels", 1)):
        hit = None
        for sep in ("-", "."):
            for ext in ("", ".gz"):
                cand = folder / f"{PREFIX[split]}-{kind}{sep}idx{dims}-ubyte{ext}"
                if cand.is_file():
                    hit = cand
                    break
            if hit is not None:
                break
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def _split_files(folder: Path, split: str) -> tuple[Path, Path]:
    files = idx_files(folder, split)
    if files is None:
        p = PREFIX[split]
        raise DataError(
            f"{folder}: no {split} IDX files ({p}-images-idx3-ubyte[.gz] and {p}-labels-idx1-ubyte[.gz])"
        )
    return files


def read_idx_split(
    folder: Path,
    split: str,
    options: LoadOptions,
    *,
    name: str | None = None,
    classes: tuple[str, ...] | None = None,
    hflip: bool = False,
) -> ImageSet:
    """Read one split of an IDX folder into ``[N, 1, 28, 28]`` uint8 (or ``image_size`` square)."""
    folder = Path(folder)
    images_path, labels_path = _split_files(folder, split)
    x = read_idx(images_path, IMAGES_MAGIC)
    y = read_idx(labels_path, LABELS_MAGIC)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{folder}: {y.shape[0]} labels ({labels_path.name}) for {x.shape[0]} images")
    if classes is None:
        classes = limits.classes_from_labels([y], str(folder), at_least=10)
    xt = torch.from_numpy(x.copy()).unsqueeze(1)
    if options.image_size:
        xt = resize_uint8(xt, options.image_size)
    label = name or folder.name
    return ImageSet(xt, torch.from_numpy(y.astype(np.int64)), classes, f"{label}/{split}", hflip=hflip)


def count_idx(folder: Path) -> dict[str, int]:
    """``{split: n}`` from the headers of the image and label files (a few bytes each)."""
    out = {}
    for split in PREFIX:
        files = idx_files(folder, split)
        if files is None:
            continue
        (n_img, *_), _ = parse_header(_open(files[0], 16), str(files[0]), IMAGES_MAGIC)
        (n_lab,), _ = parse_header(_open(files[1], 8), str(files[1]), LABELS_MAGIC)
        if n_img != n_lab:
            raise DataError(f"{folder}: {n_lab} labels for {n_img} images ({split})")
        out[split] = n_img
    return out


def sniff_idx(path: Path) -> bool:
    """A folder holding the training or test IDX files."""
    return path.is_dir() and any(idx_files(path, s) is not None for s in PREFIX)


def _locator(subdirs: tuple[str, ...]) -> Callable[[Path], Path | None]:
    def locate(root: Path) -> Path | None:
        for sub in subdirs:
            folder = root / sub
            if folder.is_dir() and idx_files(folder, "train") is not None:
                return folder
        return None

    return locate


MNIST = register_source(
    DatasetSource(
        name="mnist",
        description="MNIST handwritten digits, 28x28 grey, 60000/10000 (IDX files, .gz or raw)",
        hflip=False,
        locate=_locator(("mnist", "MNIST/raw", "MNIST", "mnist/raw")),
        read=lambda p, s, o: read_idx_split(p, s, o, name="mnist", classes=MNIST_CLASSES, hflip=False),
    )
)
FASHION_SUBDIRS = (
    "fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST", "fashion-mnist/data/fashion",
)  # fmt: skip
FASHION_MNIST = register_source(
    DatasetSource(
        name="fashion_mnist",
        description="Fashion-MNIST, 28x28 grey, 10 clothing classes, 60000/10000 (IDX files, .gz or raw)",
        hflip=True,
        locate=_locator(FASHION_SUBDIRS),
        read=lambda p, s, o: read_idx_split(
            p, s, o, name="fashion_mnist", classes=FASHION_CLASSES, hflip=True
        ),
        aliases=("fashion-mnist", "fashionmnist"),
    )
)
register_path_format(
    PathFormat("idx", sniff_idx, lambda p, s, o: read_idx_split(p, s, o), count=count_idx, priority=30)
)
