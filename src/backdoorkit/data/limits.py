"""Resource limits and the validation every dataset reader applies before it allocates.

Memory and time of a load stay proportional to the size of the files read, never to a number written
inside them (a class count taken from the labels, an npy / IDX header's shape, a zip member's or a
gzip stream's declared size, an image header's width and height).  Each reader checks what a file
*claims* against these limits before allocating or inflating anything:

* :data:`MAX_CLASSES` (100,000): class names or one more than the largest label;
* :data:`MAX_INFLATION` (100) and :data:`INFLATION_SLACK` (1 MiB): what a compressed input (npz
  members, gzipped IDX files, CIFAR archives, PNG / JPEG images) may inflate to is at most
  ``100 x its file size + 1 MiB``; real data inflates 1.1x (CIFAR-10) to 6x (MNIST, lzma npz);
* :data:`MAX_NPY_HEADER` (10,000 bytes, numpy's own default): the header of an ``.npy`` member;
* :data:`MAX_CSV_FIELD` (1,024 characters) and :data:`MAX_CSV_LINE` (4,096): GTSRB annotation CSVs;
* :data:`MAX_IMAGE_PIXELS` (4096 x 4096): one decoded image;
* :data:`MIN_IMAGE_SIDE` (4): a loaded split's height and width, the smallest input every
  registered model takes (the ViTs' patch); this also settles ``[N, 3, H, 3]``-like arrays, where
  either reading of the channel axis would give a side below the minimum.

A loaded split must also be non-empty and have distinct class names (:func:`check_loaded`).  Every
violation is a :class:`~backdoorkit.errors.DataError` with one line naming the file and the limit.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from typing import Any

from backdoorkit.errors import DataError

MAX_CLASSES = 100_000
MAX_INFLATION = 100
INFLATION_SLACK = 1 << 20
MAX_NPY_HEADER = 10_000
MAX_CSV_FIELD = 1_024
MAX_CSV_LINE = 4_096
MAX_IMAGE_PIXELS = 4096 * 4096
MIN_IMAGE_SIDE = 4


def inflation_budget(file_size: int) -> int:
    """The most bytes a compressed input of ``file_size`` bytes may inflate to."""
    return MAX_INFLATION * max(int(file_size), 0) + INFLATION_SLACK


def check_inflation(claimed: int, file_size: int, where: str, what: str = "data") -> None:
    """Refuse ``claimed`` inflated bytes for a ``file_size``-byte input beyond :func:`inflation_budget`."""
    budget = inflation_budget(file_size)
    if claimed > budget:
        raise DataError(
            f"{where}: {what} would inflate to {claimed:,} bytes from a {file_size:,}-byte file "
            f"(limit {MAX_INFLATION} x the file size + {INFLATION_SLACK >> 20} MiB)"
        )


def check_class_count(n: int, where: str) -> None:
    """At most :data:`MAX_CLASSES` classes."""
    if n > MAX_CLASSES:
        raise DataError(f"{where}: {n:,} classes, more than the limit of {MAX_CLASSES:,}")


def classes_from_labels(labels: Iterable[Any], where: str, at_least: int = 0) -> tuple[str, ...]:
    """Names ``"0" ... "K-1"`` where ``K`` is one more than the largest label (checked first)."""
    top = -1
    for y in labels:
        if getattr(y, "size", 0):
            lo, hi = int(y.min()), int(y.max())
            if lo < 0:
                raise DataError(f"{where}: negative label {lo}")
            top = max(top, hi)
    count = max(top + 1, at_least, 1)
    check_class_count(count, f"{where}: largest label {top}")
    return tuple(str(i) for i in range(count))


def check_class_names(names: tuple[str, ...], where: str) -> tuple[str, ...]:
    """Distinct, at most :data:`MAX_CLASSES` names."""
    check_class_count(len(names), where)
    if len(set(names)) != len(names):
        seen: set[str] = set()
        dup = next(n for n in names if n in seen or seen.add(n))  # type: ignore[func-returns-value]
        raise DataError(f"{where}: class name {dup!r} appears more than once")
    return names


def check_image_header(width: int, height: int, bands: int, file_size: int, where: str) -> None:
    """An image header's size against :data:`MAX_IMAGE_PIXELS` and the inflation budget (before decoding)."""
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(
            f"{where}: a {width}x{height} image has more than the limit of {MAX_IMAGE_PIXELS:,} pixels"
        )
    check_inflation(width * height * max(bands, 1), file_size, where, f"a {width}x{height} image")


def check_loaded(x_shape: tuple[int, ...], classes: tuple[str, ...], where: str, split: str) -> None:
    """A decoded split: non-empty, sides of at least :data:`MIN_IMAGE_SIDE`, distinct class names."""
    if x_shape[0] == 0:
        raise DataError(f"{where}: the {split} split holds no images")
    h, w = x_shape[-2:]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise DataError(
            f"{where}: {h}x{w} images are smaller than the models' minimum of "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} (pass an image size to resize them)"
        )
    check_class_names(classes, where)


def shape_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes of an array of ``shape`` (exact Python integers, no overflow)."""
    return math.prod(shape) * itemsize


class BoundedReader(io.RawIOBase):
    """A read-only stream that refuses to deliver more than ``budget`` bytes of ``inner``.

    Wraps a decompressing stream (gzip, bz2, lzma) so that inflation stops, with a
    :class:`DataError`, as soon as it passes the budget, whatever the stream's headers claim.
    """

    def __init__(self, inner: io.IOBase, budget: int, where: str, file_size: int) -> None:
        super().__init__()
        self.inner, self.budget, self.where, self.file_size = inner, budget, where, file_size
        self.delivered = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.inner.read(min(len(view), self.budget + 1 - self.delivered))
        n = len(data)
        view[:n] = data
        self.delivered += n
        if self.delivered > self.budget:
            raise DataError(
                f"{self.where}: inflates to more than {self.budget:,} bytes from a {self.file_size:,}-byte "
                f"file (limit {MAX_INFLATION} x the file size + {INFLATION_SLACK >> 20} MiB)"
            )
        return n

    def close(self) -> None:
        self.inner.close()
        super().close()
