"""Hostile dataset files, one class at a time, each crafted here: every one ends with exit code 2 and one
line on stderr, never a traceback.  Also: a missing ``--data-root``, and a CIFAR batch pickled by Python 3
(protocol 2, numpy scalar labels) that is read while anything but data is still refused."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backdoorkit.data import load_dataset
from backdoorkit.data.cifar import CIFAR10_CLASSES
from backdoorkit.errors import DataError
from hardening_helpers import cli_error, isolate


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def train_error(capsys: pytest.CaptureFixture, dataset: Path | str, *needles: str) -> str:
    line = cli_error(
        capsys, "train", "-d", str(dataset), "--width", "2", "--epochs", "1", "-o", "m.safetensors"
    )
    for needle in needles:
        assert needle in line, line
    return line


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def _good(n: int = 4, side: int = 8) -> dict[str, np.ndarray]:
    x = np.zeros((n, side, side), np.uint8)
    return {"x_train": x, "y_train": np.arange(n) % 2, "x_test": x, "y_test": np.arange(n) % 2}


def _npy(header: bytes, data: bytes = b"", version: int = 1) -> bytes:
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) + header + data


def _npz_with(path: Path, member: str, raw: bytes) -> Path:
    arrays = _good()
    with zipfile.ZipFile(path, "w") as zf:
        for key, arr in arrays.items():
            if key == member:
                zf.writestr(f"{key}.npy", raw)
            else:
                buf = io.BytesIO()
                np.save(buf, arr)
                zf.writestr(f"{key}.npy", buf.getvalue())
    return path


# ---------------------------------------------------------------------------------- corrupt npy header
CORRUPT_HEADERS = {
    "not-a-dict": _npy(b"[1, 2, 3]" + b" " * 54 + b"\n"),
    "syntax": _npy(b"{'descr': '|u1', 'fortran_order': False, 'shape': (4, 8, 8" + b" " * 10 + b"\n"),
    "negative-shape": _npy(
        b"{'descr': '|u1', 'fortran_order': False, 'shape': (-4, 8, 8), }" + b" " * 10 + b"\n"
    ),
    "shape-beyond-data": _npy(
        b"{'descr': '|u1', 'fortran_order': False, 'shape': (100000, 800, 800), }       \n", b"\0" * 256
    ),
    "object-dtype": _npy(
        b"{'descr': '|O', 'fortran_order': False, 'shape': (4, 8, 8), }" + b" " * 12 + b"\n"
    ),
    "structured-dtype": _npy(
        b"{'descr': [('a', '<u1')], 'fortran_order': False, 'shape': (4, 8, 8), }       \n", b"\0" * 256
    ),
    "bad-magic": b"\x93NUMPX\x01\x00" + b"\0" * 80,
    "header-length-4GiB": _npy(b"{", version=2)[:8] + struct.pack("<I", 0xFFFFFFF0) + b"{",
    "truncated": b"\x93NUMPY\x01",
}


@pytest.mark.parametrize("case", list(CORRUPT_HEADERS))
def test_corrupt_npy_header(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    path = _npz_with(tmp_path / f"{case}.npz", "x_train", CORRUPT_HEADERS[case])
    train_error(capsys, path, f"{case}.npz")


# --------------------------------------------------------------------------------------------- GTSRB
HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"


def _gtsrb(root: Path, row: str) -> Path:
    folder = root / "GTSRB" / "Final_Training" / "Images" / "00000"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "00000_00000.ppm")
    (folder / "GT-00000.csv").write_text(HEADER + row)
    return root / "GTSRB"


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("a" * 2000 + ".ppm;20;20;1;1;19;19;0\n", "a field of 2,004 characters"),
        ("00000_00000.ppm;20;20;1;1;19;19;0;" + "x;" * 3000 + "\n", "characters (limit 4,096)"),
        ('"00000_00000.ppm;20;20;1;1;19;19;0\n', "GT-00000.csv"),  # an unclosed quote swallows the file
    ],
    ids=["long-field", "long-line", "unclosed-quote"],
)
def test_overlong_csv(tmp_path: Path, capsys: pytest.CaptureFixture, row: str, needle: str) -> None:
    if row.startswith('"'):
        row = row + ("y" * 900 + "\n") * 3  # the quoted field spans lines and grows past the limit
    train_error(capsys, _gtsrb(tmp_path, row), "GT-00000.csv", needle)


@pytest.mark.parametrize("name", ["../../../../secret.ppm", "/etc/hostname", "link.ppm", "..\\x.ppm"])
def test_gtsrb_path_leaving_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture, name: str) -> None:
    secret = tmp_path / "secret.ppm"  # a readable image outside the dataset: loading it would succeed
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(secret)
    root = _gtsrb(tmp_path, f"{name};20;20;1;1;19;19;0\n")
    if name == "link.ppm":
        (root / "Final_Training" / "Images" / "00000" / "link.ppm").symlink_to(secret)
    train_error(capsys, root, "GT-00000.csv: line 2")


def test_gtsrb_label_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train_error(capsys, _gtsrb(tmp_path, "00000_00000.ppm;20;20;1;1;19;19;43\n"), "ClassId 43 out of range")


# -------------------------------------------------------------------------- empty splits, small images
def test_empty_test_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    arrays = _good()
    arrays["x_test"], arrays["y_test"] = arrays["x_test"][:0], arrays["y_test"][:0]
    train_error(capsys, _npz(tmp_path / "e.npz", **arrays), "the test split holds no images")

    def _idx(arr: np.ndarray) -> bytes:
        head = struct.pack(">I", 0x0800 | arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
        return head + arr.tobytes()

    folder = tmp_path / "idx"
    folder.mkdir()
    for prefix, n in (("train", 3), ("t10k", 0)):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(np.zeros((n, 8, 8), np.uint8)))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(np.zeros(n, np.uint8)))
    train_error(capsys, folder, "the test split holds no images")


@pytest.mark.parametrize("side", [1, 2, 3])
def test_images_smaller_than_the_minimum(tmp_path: Path, capsys: pytest.CaptureFixture, side: int) -> None:
    train_error(capsys, _npz(tmp_path / "s.npz", **_good(side=side)), "smaller than the models' minimum")


@pytest.mark.parametrize("shape", [(4, 3, 8, 3), (4, 1, 16, 3), (4, 3, 16, 1), (4, 1, 1, 1)])
def test_ambiguous_channel_layout(tmp_path: Path, capsys: pytest.CaptureFixture, shape: tuple) -> None:
    arrays = _good()
    arrays["x_train"] = arrays["x_test"] = np.zeros(shape, np.uint8)
    train_error(capsys, _npz(tmp_path / "amb.npz", **arrays), "ambiguous image shape")


def test_unambiguous_layouts_are_read(tmp_path: Path) -> None:
    arrays = _good()
    arrays["x_train"] = np.zeros((4, 8, 6, 3), np.uint8)  # channel-last, unambiguous
    assert load_dataset(_npz(tmp_path / "a.npz", **arrays)).image_shape == (3, 8, 6)
    arrays["x_train"] = np.zeros((4, 3, 8, 6), np.uint8)
    assert load_dataset(_npz(tmp_path / "b.npz", **arrays)).image_shape == (3, 8, 6)


# ---------------------------------------------------------------------------------- duplicated classes
def test_duplicated_class_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    p = _npz(tmp_path / "d.npz", **_good(), classes=np.array(["cat", "cat"]))
    train_error(capsys, p, "class name 'cat' appears more than once")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(batch)
    names = [c.encode() for c in CIFAR10_CLASSES[:9]] + [b"airplane"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    train_error(capsys, folder, "class name 'airplane' appears more than once")


# -------------------------------------------------------------------------------------- missing root
def test_datasets_missing_root(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    line = cli_error(capsys, "datasets", "--data-root", str(tmp_path / "missing"))
    assert "missing does not exist" in line
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in cli_error(capsys, "datasets", "--data-root", str(tmp_path / "file"))
    assert "does not exist" in cli_error(capsys, "train", "--data-root", "/missing", "--epochs", "1")


# ---------------------------------------------------------------------------- CIFAR pickled by Python 3
def _py3_batches(folder: Path, protocol: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [np.int64(v) for v in rng.integers(0, 10, 2)]
        batch = {
            "data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
            "labels": labels,
            "batch_label": name,
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    meta = {"label_names": list(CIFAR10_CLASSES), "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_python3_pickles_are_read(tmp_path: Path, protocol: int) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _py3_batches(folder, protocol)
    train = load_dataset(folder, "train")
    assert train.x.shape == (10, 3, 32, 32) and train.classes == CIFAR10_CLASSES
    raw = pickle.loads((folder / "data_batch_1").read_bytes())
    assert np.array_equal(train.x[:2].reshape(2, -1).numpy(), raw["data"])
    assert train.y[:2].tolist() == [int(v) for v in raw["labels"]]


class _Reduce:
    def __init__(self, func: object, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return (self.func, self.args)


def _codecs_encode() -> object:
    import _codecs

    return _codecs.encode


HOSTILE_DATA = {
    "codecs-other-encoding": _Reduce(_codecs_encode(), ("eJzLSM3JyVcozy/KSQEAGgQEXQ==", "base64")),
    "ndarray-called": _Reduce(np.ndarray, ((10**6, 10**6),)),
    "object-scalar": np.array([print], dtype=object),
    "object-dtype": np.dtype(object),
}


@pytest.mark.parametrize("case", list(HOSTILE_DATA))
def test_cifar_python3_admits_only_data(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _py3_batches(folder, 2)
    evil = {"data": HOSTILE_DATA[case], "labels": [np.int64(0)]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError, match="data_batch_3: refused to unpickle"):
        load_dataset(folder, "train")
    train_error(capsys, folder, "data_batch_3: refused to unpickle")
