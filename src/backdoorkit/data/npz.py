"""``.npz`` datasets: ``x_train, y_train, x_test, y_test`` and optionally ``classes``.

Images are uint8, ``[N, H, W]`` (grey), ``[N, H, W, C]`` or ``[N, C, H, W]`` with 1 or 3 channels;
labels are integers ``[N]``; ``classes`` is a string array (default: ``"0" ... "K-1"`` where ``K`` is
one more than the largest label in either split).  This is the format of the project's shared
benchmark copies (members may be lzma-compressed, which ``numpy.load`` reads).

Files are read with ``allow_pickle=False``: an object array (which would need pickle) is refused,
never unpickled.  ``count_npz`` reads only the ``.npy`` headers of the label arrays.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from backdoorkit.data.imageset import ImageSet
from backdoorkit.data.sources import LoadOptions
from backdoorkit.errors import DataError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def _to_nchw(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:  # [N, H, W] grey
        return x[:, None]
    if x.ndim != 4:
        raise DataError(f"{where}: images must be 3-D or 4-D, got shape {x.shape}")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.shape[1] in (1, 3):
        return x
    raise DataError(f"{where}: cannot tell the channel axis of images with shape {x.shape}")


def _class_names(raw: np.ndarray | None, labels: list[np.ndarray], where: str) -> tuple[str, ...]:
    if raw is None:
        top = max((int(y.max()) for y in labels if y.size), default=0)
        return tuple(str(i) for i in range(top + 1))
    if raw.ndim != 1 or raw.dtype.kind not in "USiu":
        raise DataError(f"{where}: classes must be a 1-D array of names, got {raw.dtype} {raw.shape}")
    if raw.dtype.kind == "S":
        return tuple(c.decode("utf-8", "replace") for c in raw)
    return tuple(str(c) for c in raw)


def read_npz(
    path: Path, split: str, options: LoadOptions, name: str | None = None, hflip: bool = True
) -> ImageSet:
    """Read one split of an npz dataset file (named ``name`` or the file's stem)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: not an npz archive (a single .npy array?)")
        with z:
            missing = [k for k in REQUIRED if k not in z.files]
            if missing:
                raise DataError(f"{path}: missing arrays {', '.join(missing)} (need {', '.join(REQUIRED)})")
            x = z[f"x_{split}"]
            y = z[f"y_{split}"]
            other = z["y_test" if split == "train" else "y_train"]
            raw_classes = z["classes"] if "classes" in z.files else None
    except DataError:
        raise
    except ValueError as exc:  # object arrays need pickle; also malformed .npy headers
        raise DataError(f"{path}: refused to read (needs pickle or is malformed): {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise DataError(f"{path}: not a readable npz file ({exc})") from None
    if x.dtype != np.uint8:
        raise DataError(f"{path}: x_{split} must be uint8, got {x.dtype}")
    for key, arr in ((f"y_{split}", y), ("y_" + ("test" if split == "train" else "train"), other)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"{path}: {key} must hold integers, got {arr.dtype}")
    if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
        raise DataError(f"{path}: y_{split} must be [N], got shape {y.shape}")
    x = _to_nchw(x, str(path))
    y = y.reshape(-1)
    classes = _class_names(raw_classes, [y, other.reshape(-1)], str(path))
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if options.image_size:
        from backdoorkit.data.transforms import resize_uint8

        xt = resize_uint8(xt, options.image_size)
    label = name or path.stem
    return ImageSet(xt, torch.from_numpy(y.astype(np.int64)), classes, f"{label}/{split}", hflip=hflip)


def _npy_shape(archive: zipfile.ZipFile, member: str, where: Path) -> tuple[int, ...]:
    try:
        with archive.open(member) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, _ = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, _ = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{where}: cannot read the header of {member} ({exc})") from None
    return tuple(shape)


def count_npz(path: Path) -> dict[str, int]:
    """``{"train": n, "test": n}`` from the label arrays' headers (no data is decompressed)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            out = {}
            for split in ("train", "test"):
                member = f"y_{split}.npy"
                if member not in names:
                    raise DataError(f"{path}: missing arrays y_{split}")
                shape = _npy_shape(archive, member, path)
                out[split] = int(shape[0]) if shape else 0
            return out
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable npz file ({exc})") from None


def is_npz(path: Path) -> bool:
    """Whether ``path`` is a file named ``*.npz``."""
    return path.is_file() and path.suffix.lower() == ".npz"
