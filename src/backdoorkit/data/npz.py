"""``.npz`` datasets: ``x_train, y_train, x_test, y_test`` and optionally ``classes``.

Images are uint8, ``[N, H, W]`` (grey), ``[N, H, W, C]`` or ``[N, C, H, W]`` with 1 or 3 channels;
labels are integers ``[N]``; ``classes`` is a string array (default: ``"0" ... "K-1"`` where ``K`` is
one more than the largest label in either split, at most :data:`~.limits.MAX_CLASSES`).  This is the
format of the project's shared benchmark copies (members may be deflate- or lzma-compressed).

The archive is read member by member with :mod:`zipfile` and numpy's header parser, never with
pickle, and every claim is checked before anything is allocated or inflated (:mod:`.limits`): the
members' declared sizes against ``100 x the file size + 1 MiB``, each ``.npy`` header's length
(10,000 bytes) and its shape x dtype against the bytes its member holds, and the dtype itself (no
object, structured or sub-array dtypes; images uint8, labels integers).  A corrupt header is one
:class:`~backdoorkit.errors.DataError`.  The channel axis of 4-D images is the one of size 1 or 3;
when both axis 1 and the last axis could be it, either reading leaves a side below the models'
minimum and the array is refused.  ``count_npz`` reads only the label arrays' headers.
"""

from __future__ import annotations

import io
import lzma
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from backdoorkit.data import limits
from backdoorkit.data.imageset import ImageSet
from backdoorkit.data.sources import LoadOptions
from backdoorkit.errors import DataError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
_READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError,
                RuntimeError, KeyError)  # fmt: skip


def _to_nchw(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:  # [N, H, W] grey
        return x[:, None]
    if x.ndim != 4:
        raise DataError(f"{where}: images must be 3-D or 4-D, got shape {x.shape}")
    first, last = x.shape[1] in (1, 3), x.shape[-1] in (1, 3)
    if first and last:
        raise DataError(
            f"{where}: ambiguous image shape {x.shape}: axis 1 and the last axis could both be the "
            f"channels, and either reading gives a side below {limits.MIN_IMAGE_SIDE}"
        )
    if last:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if first:
        return x
    raise DataError(f"{where}: cannot tell the channel axis of images with shape {x.shape}")


def _class_names(raw: np.ndarray | None, labels: list[np.ndarray], where: str) -> tuple[str, ...]:
    if raw is None:
        return limits.classes_from_labels(labels, where)
    if raw.ndim != 1 or raw.dtype.kind not in "USiu":
        raise DataError(f"{where}: classes must be a 1-D array of names, got {raw.dtype} {raw.shape}")
    limits.check_class_count(len(raw), where)
    if raw.dtype.kind == "S":
        return tuple(c.decode("utf-8", "replace") for c in raw)
    return tuple(str(c) for c in raw)


class _Archive:
    """An npz file opened for validated reading (see the module docstring)."""

    def __init__(self, path: Path, zf: zipfile.ZipFile) -> None:
        self.path, self.zf = path, zf
        self.members = {n.removesuffix(".npy"): n for n in zf.namelist()}
        self.file_size = path.stat().st_size

    @property
    def files(self) -> set[str]:
        return set(self.members)

    def check_budget(self, keys: list[str]) -> None:
        """The declared sizes of the members about to be read, against the inflation budget."""
        claimed = sum(self.zf.getinfo(self.members[k]).file_size for k in keys if k in self.members)
        limits.check_inflation(claimed, self.file_size, str(self.path), "its arrays")

    def header(self, key: str, f: io.IOBase) -> tuple[tuple[int, ...], bool, np.dtype, int]:
        """``(shape, fortran_order, dtype, data bytes)`` of member ``key``, validated."""
        where = f"{self.path}: {key}"
        try:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise DataError(f"{where}: unsupported .npy format version {version[0]}.{version[1]}")
            width = 2 if version == (1, 0) else 4
            raw_len = f.read(width)
            if len(raw_len) < width:
                raise DataError(f"{where}: truncated .npy header")
            length = struct.unpack("<H" if width == 2 else "<I", raw_len)[0]
            if length > limits.MAX_NPY_HEADER:
                raise DataError(
                    f"{where}: .npy header of {length:,} bytes, "
                    f"more than the limit of {limits.MAX_NPY_HEADER:,}"
                )
            text = io.BytesIO(raw_len + f.read(length))
            read = np.lib.format.read_array_header_1_0 if width == 2 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(text, max_header_size=limits.MAX_NPY_HEADER)
        except DataError:
            raise
        except Exception as exc:  # numpy parses the header with ast: any failure is a corrupt header
            raise DataError(f"{where}: corrupt .npy header ({' '.join(str(exc).split())[:120]})") from None
        if dtype.hasobject:
            raise DataError(f"{self.path}: refused to read (needs pickle): {key} is an object array")
        if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biufcUS":
            raise DataError(f"{where}: unsupported dtype {dtype} (plain numbers or strings only)")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise DataError(f"{where}: corrupt .npy header (shape {shape})")
        nbytes = limits.shape_bytes(tuple(shape), dtype.itemsize)
        held = self.zf.getinfo(self.members[key]).file_size - f.tell()
        if nbytes > held:
            raise DataError(
                f"{where}: header claims shape {tuple(shape)} of {dtype} ({nbytes:,} bytes) "
                f"but the member holds {max(held, 0):,}"
            )
        return tuple(shape), bool(fortran), dtype, nbytes

    def peek(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of a member from its header alone."""
        try:
            with self.zf.open(self.members[key]) as f:
                shape, _, dtype, _ = self.header(key, f)
        except _READ_ERRORS as exc:
            raise DataError(f"{self.path}: cannot read the header of {key} ({exc})") from None
        return shape, dtype

    def array(self, key: str, kinds: str) -> np.ndarray:
        """Member ``key`` as an array whose dtype kind is in ``kinds`` (checked before reading data)."""
        try:
            with self.zf.open(self.members[key]) as f:
                shape, fortran, dtype, nbytes = self.header(key, f)
                if dtype.kind not in kinds:
                    what = "must be uint8" if kinds == "u" else "must hold integers"
                    raise DataError(f"{self.path}: {key} {what}, got {dtype}")
                if kinds == "u" and dtype.itemsize != 1:
                    raise DataError(f"{self.path}: {key} must be uint8, got {dtype}")
                buf = bytearray(nbytes)
                view, got = memoryview(buf), 0
                while got < nbytes:
                    n = f.readinto(view[got:])
                    if not n:
                        raise DataError(f"{self.path}: {key} is truncated ({got:,} of {nbytes:,} bytes)")
                    got += n
        except DataError:
            raise
        except _READ_ERRORS as exc:
            raise DataError(f"{self.path}: not a readable npz file ({exc})") from None
        arr = np.frombuffer(buf, dtype=dtype)
        return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def _open_archive(path: Path) -> tuple[zipfile.ZipFile, _Archive]:
    try:
        zf = zipfile.ZipFile(path)
        return zf, _Archive(path, zf)
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: not a readable npz file ({exc})") from None


def read_npz(
    path: Path, split: str, options: LoadOptions, name: str | None = None, hflip: bool = True
) -> ImageSet:
    """Read one split of an npz dataset file (named ``name`` or the file's stem)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    zf, z = _open_archive(path)
    with zf:
        missing = [k for k in REQUIRED if k not in z.files]
        if missing:
            raise DataError(f"{path}: missing arrays {', '.join(missing)} (need {', '.join(REQUIRED)})")
        other_key = "y_test" if split == "train" else "y_train"
        keys = [f"x_{split}", f"y_{split}", other_key, *(["classes"] if "classes" in z.files else [])]
        z.check_budget(keys)
        x = z.array(f"x_{split}", "u")
        y = z.array(f"y_{split}", "iu")
        other = z.array(other_key, "iu")
        raw_classes = z.array("classes", "USiu") if "classes" in z.files else None
    if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
        raise DataError(f"{path}: y_{split} must be [N], got shape {y.shape}")
    x = _to_nchw(x, str(path))
    y = y.reshape(-1)
    if len(y) != x.shape[0]:
        raise DataError(f"{path}: {len(y)} labels (y_{split}) for {x.shape[0]} images (x_{split})")
    classes = _class_names(raw_classes, [y, other.reshape(-1)], str(path))
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if options.image_size:
        from backdoorkit.data.transforms import resize_uint8

        xt = resize_uint8(xt, options.image_size)
    label = name or path.stem
    return ImageSet(xt, torch.from_numpy(y.astype(np.int64)), classes, f"{label}/{split}", hflip=hflip)


def count_npz(path: Path) -> dict[str, int]:
    """``{"train": n, "test": n}`` from the label arrays' headers (no data is decompressed)."""
    path = Path(path)
    zf, z = _open_archive(path)
    with zf:
        out = {}
        for split in ("train", "test"):
            if f"y_{split}" not in z.files:
                raise DataError(f"{path}: missing arrays y_{split}")
            shape, _ = z.peek(f"y_{split}")
            out[split] = int(shape[0]) if shape else 0
        return out


def is_npz(path: Path) -> bool:
    """Whether ``path`` is a file named ``*.npz``."""
    return path.is_file() and path.suffix.lower() == ".npz"
