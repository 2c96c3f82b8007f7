"""Resource bounds of the dataset readers: memory and time follow the size of the file, not a number
written inside it.  Each hostile file is crafted here (a few KB to a few MB on disk, claiming up to
terabytes); each load must be refused with one line, under a stated peak of Python / numpy memory
(``tracemalloc``, which sees numpy's buffers and every decompressed bytes object) and a time bound.
The limits are those of :mod:`backdoorkit.data.limits`."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backdoorkit.data import limits, load_dataset
from backdoorkit.errors import DataError
from hardening_helpers import isolate
from hardening_helpers import refused_within_bounds as refused_within

PEAK_MB = 32  # every refusal below stays under this much Python / numpy memory
SECONDS = 5.0  # and under this much time (on a loaded 2-core CPU)


def refused_within_bounds(load: Callable[[], object], match: str) -> None:
    """``load()`` raises a one-line DataError matching ``match``, within PEAK_MB and SECONDS."""
    refused_within(load, match, error=DataError, peak_mb=PEAK_MB, seconds=SECONDS)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _small(n: int = 4) -> dict[str, np.ndarray]:
    x = np.zeros((n, 8, 8), np.uint8)
    return {"x_train": x, "y_train": np.arange(n) % 2, "x_test": x, "y_test": np.arange(n) % 2}


# ---------------------------------------------------------------------------------------------- npz
def test_npz_member_inflating_far_beyond_its_file(tmp_path: Path) -> None:
    """An honest deflate bomb: 64 MB of zeros in a ~64 KB archive (limit 100 x + 1 MiB)."""
    path = tmp_path / "bomb.npz"
    arrays = _small()
    arrays["x_train"] = np.zeros((1000, 256, 256), np.uint8)
    np.savez_compressed(path, **arrays)
    assert path.stat().st_size < 1 << 20
    refused_within_bounds(lambda: load_dataset(path, "train"), "would inflate to .*limit 100 x the file size")


def test_npz_member_declaring_a_huge_size(tmp_path: Path) -> None:
    """A zip member whose central directory claims 1 TB (the data are a few bytes)."""
    path = tmp_path / "liar.npz"
    np.savez(path, **_small())
    raw = bytearray(path.read_bytes())
    cd = raw.rfind(b"PK\x01\x02")  # last central directory entry: patch its uncompressed size
    raw[cd + 24 : cd + 28] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(raw))
    refused_within_bounds(lambda: load_dataset(path, "train"), "would inflate to|not a readable npz")


@pytest.mark.parametrize(("shape", "descr"), [((10**6, 10**6), "|u1"), ((2**40,), "<i8"), ((4,), "<U100000")])
def test_npy_header_claiming_more_than_the_member(tmp_path: Path, shape: tuple, descr: str) -> None:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode().ljust(118) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 64
    path = tmp_path / "header.npz"
    key = "x_train" if descr == "|u1" else ("y_train" if descr == "<i8" else "classes")
    with zipfile.ZipFile(path, "w") as zf:
        for k, arr in {**_small(), "classes": np.array(["a", "b"])}.items():
            zf.writestr(f"{k}.npy", npy if k == key else _npy_bytes(arr))
    refused_within_bounds(lambda: load_dataset(path, "train"), "header claims shape")


def test_npy_header_length(tmp_path: Path) -> None:
    npy = b"\x93NUMPY\x02\x00" + struct.pack("<I", limits.MAX_NPY_HEADER + 1) + b" " * 64
    path = tmp_path / "long.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for k, arr in _small().items():
            zf.writestr(f"{k}.npy", npy if k == "x_train" else _npy_bytes(arr))
    refused_within_bounds(lambda: load_dataset(path, "train"), "header of 10,001 bytes, more than the limit")


@pytest.mark.parametrize("top", [limits.MAX_CLASSES, 2**40, 2**62])
def test_class_count_from_labels(tmp_path: Path, top: int) -> None:
    arrays = _small()
    arrays["y_train"] = np.array([0, 1, 0, top], np.int64)
    path = tmp_path / "labels.npz"
    np.savez(path, **arrays)
    refused_within_bounds(
        lambda: load_dataset(path, "train"), f"classes, more than the limit of {limits.MAX_CLASSES:,}"
    )


def test_class_names_count(tmp_path: Path) -> None:
    path = tmp_path / "names.npz"
    np.savez(path, **_small(), classes=np.arange(limits.MAX_CLASSES + 1))
    refused_within_bounds(lambda: load_dataset(path, "train"), "classes, more than the limit")


# ---------------------------------------------------------------------------------------------- IDX
def _idx_header(magic: int, *sizes: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in sizes)


def _idx_folder(tmp_path: Path, images: bytes, gz: bool) -> Path:
    folder = tmp_path / "idx"
    folder.mkdir()
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    (folder / name).write_bytes(gzip.compress(images) if gz else images)
    (folder / "train-labels-idx1-ubyte").write_bytes(_idx_header(0x801, 4) + bytes(4))
    return folder


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_idx_header_claiming_terabytes(tmp_path: Path, gz: bool) -> None:
    folder = _idx_folder(tmp_path, _idx_header(0x803, 2**32 - 1, 2**16, 2**16) + bytes(64), gz)
    match = "would inflate to" if gz else "truncated IDX file"
    refused_within_bounds(lambda: load_dataset(folder, "train"), match)


def test_idx_gzip_bomb(tmp_path: Path) -> None:
    """An honest header (4,000 images of 128x128 = 64 MB) in a ~64 KB gzip: inflation stops at the budget."""
    folder = _idx_folder(tmp_path, _idx_header(0x803, 4000, 128, 128) + bytes(4000 * 128 * 128), True)
    refused_within_bounds(lambda: load_dataset(folder, "train"), "would inflate to")


def test_idx_gzip_stream_longer_than_its_header(tmp_path: Path) -> None:
    """A small header followed by 64 MB of zeros: only one byte past the payload is inflated."""
    folder = _idx_folder(tmp_path, _idx_header(0x803, 4, 8, 8) + bytes(64 << 20), True)
    refused_within_bounds(lambda: load_dataset(folder, "train"), "bytes after the data")


# -------------------------------------------------------------------------------------------- CIFAR
def test_cifar_archive_bomb(tmp_path: Path) -> None:
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert path.stat().st_size < 1 << 20
    refused_within_bounds(lambda: load_dataset(path, "train"), "inflates to more than")


# -------------------------------------------------------------------------------------------- CSV / images
def test_csv_field_of_megabytes(tmp_path: Path) -> None:
    folder = tmp_path / "GTSRB" / "Final_Training" / "Images" / "00000"
    folder.mkdir(parents=True)
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
    (folder / "GT-00000.csv").write_text(header + "a" * (4 << 20) + ";1;1;0;0;1;1;0\n")
    refused_within_bounds(lambda: load_dataset(tmp_path / "GTSRB", "train"), "characters \\(limit 4,096\\)")


def test_image_header_claiming_many_pixels(tmp_path: Path) -> None:
    big = tmp_path / "big" / "cls" / "a.png"
    big.parent.mkdir(parents=True)
    Image.new("L", (5000, 5000)).save(big)  # 25 M pixels, a ~25 KB file
    (tmp_path / "big" / "cls" / "b.ppm").write_bytes(b"P6\n30000 30000\n255\n" + bytes(64))
    refused_within_bounds(
        lambda: load_dataset(tmp_path / "big", "train"), "more than the limit of 16,777,216 pixels"
    )
