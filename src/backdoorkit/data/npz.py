"""``.npz`` datasets: ``x_train, y_train, x_test, y_test, classes`` (images NHWC or NCHW, uint8).

This is the format of the project's shared benchmark copies.  Files are read with
``allow_pickle=False``: an array that would need pickle is refused, never unpickled.
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


def _to_nchw(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 3:  # [N, H, W] grey
        return x[:, None]
    if x.ndim != 4:
        raise DataError(f"{path}: images must be 3-D or 4-D, got shape {x.shape}")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.shape[1] in (1, 3):
        return x
    raise DataError(f"{path}: cannot tell the channel axis of images with shape {x.shape}")


def read_npz(path: Path, split: str, options: LoadOptions, name: str | None = None, hflip: bool = True) -> ImageSet:
    """Read one split of an npz dataset file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in REQUIRED if k not in z.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing} (need {list(REQUIRED)} and classes)")
            x = z[f"x_{split}"]
            y = z[f"y_{split}"]
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else None
    except DataError:
        raise
    except ValueError as exc:  # object arrays need pickle
        raise DataError(f"{path}: refused to read (needs pickle or is malformed): {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable npz file ({exc})") from None
    if x.dtype != np.uint8:
        raise DataError(f"{path}: x_{split} must be uint8, got {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y_{split} must hold integers, got {y.dtype}")
    x = _to_nchw(x, path)
    y = y.reshape(-1)
    if classes is None:
        classes = [str(i) for i in range(int(y.max()) + 1 if y.size else 1)]
    label = name or path.stem
    if options.image_size and options.image_size != x.shape[-1]:
        from backdoorkit.data.transforms import resize_uint8

        xt = resize_uint8(torch.from_numpy(x), options.image_size)
    else:
        xt = torch.from_numpy(x)
    return ImageSet(xt, torch.from_numpy(y.astype(np.int64)), tuple(classes), f"{label}/{split}", hflip=hflip)
