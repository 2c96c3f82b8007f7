"""Dataset loaders on small files written here in each official on-disk format, and malformed ones."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backdoorkit.data import ImageSet, available, load_dataset
from backdoorkit.data.cifar import CIFAR10_CLASSES
from backdoorkit.data.gtsrb import GTSRB_CLASSES
from backdoorkit.data.idx import FASHION_CLASSES
from backdoorkit.errors import DataError, UnknownNameError


@pytest.fixture(autouse=True)
def _no_env_roots(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the user's data roots out: no $BACKDOORKIT_DATA, and ~/data, ./data resolve inside tmp_path."""
    monkeypatch.delenv("BACKDOORKIT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


# ============================================================================================ CIFAR
def _py2_pickle(d: dict[bytes, object]) -> bytes:
    """A protocol-2 pickle laid out as Python 2 wrote the official CIFAR batches (str -> BINSTRING)."""

    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def i(v: int) -> bytes:
        return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)

    def val(v: object) -> bytes:
        if isinstance(v, bytes):
            return s(v)
        if isinstance(v, int):
            return i(v)
        if isinstance(v, list):
            return b"](" + b"".join(val(x) for x in v) + b"e"
        assert isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 2
        dtype = b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R(" + i(3) + s(b"|") + b"NNN"
        dtype += i(-1) + i(-1) + i(0) + b"tb"
        head = (
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R("
        )
        return (
            head + i(1) + i(v.shape[0]) + i(v.shape[1]) + b"\x86" + dtype + b"\x89" + s(v.tobytes()) + b"tb"
        )

    return b"\x80\x02}(" + b"".join(val(k) + val(v) for k, v in d.items()) + b"u."


def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _cifar10_members(py2: bool = False) -> dict[str, bytes]:
    """Five 2-image training batches, a 3-image test batch and batches.meta."""
    dump = _py2_pickle if py2 else pickle.dumps
    out = {}
    for b in range(1, 6):
        out[f"data_batch_{b}"] = dump(
            {b"batch_label": f"training batch {b} of 5".encode(), b"labels": [b - 1, b + 4],
             b"data": _cifar_images(2, b), b"filenames": [b"a.png", b"b.png"]}
        )  # fmt: skip
    out["test_batch"] = dump({b"labels": [9, 0, 4], b"data": _cifar_images(3, 99), b"batch_label": b"test"})
    out["batches.meta"] = dump(
        {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": 2, b"num_vis": 3072}
    )
    return out


def _write_dir(folder: Path, members: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in members.items():
        (folder / name).write_bytes(data)
    return folder


def _write_tar(path: Path, top: str, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _check_cifar10(train: ImageSet, test: ImageSet) -> None:
    assert train.name == "cifar10/train" and test.name == "cifar10/test"
    assert train.x.shape == (10, 3, 32, 32) and train.x.dtype == torch.uint8
    assert train.y.tolist() == [0, 5, 1, 6, 2, 7, 3, 8, 4, 9]
    assert test.y.tolist() == [9, 0, 4]
    assert train.classes == CIFAR10_CLASSES and train.hflip
    raw = _cifar_images(2, 3)[1]  # second image of data_batch_3: rows are R, G, B planes
    img = train.x[5].numpy()
    assert (img[0] == raw[:1024].reshape(32, 32)).all()
    assert (img[2] == raw[2048:].reshape(32, 32)).all()
    assert (test.x.numpy().reshape(3, -1) == _cifar_images(3, 99)).all()


@pytest.mark.parametrize("py2", [False, True], ids=["pickle.dump", "python2-layout"])
def test_cifar10_folder(tmp_path: Path, py2: bool) -> None:
    _write_dir(tmp_path / "root" / "cifar-10-batches-py", _cifar10_members(py2))
    root = tmp_path / "root"
    _check_cifar10(load_dataset("cifar10", "train", root), load_dataset("cifar10", "test", root))
    # the folder itself is recognised as a path too
    by_path = load_dataset(root / "cifar-10-batches-py", "train")
    assert by_path.name == "cifar10/train" and torch.equal(by_path.x, load_dataset("cifar10", root=root).x)


def test_cifar10_archive_and_counts(tmp_path: Path) -> None:
    archive = _write_tar(
        tmp_path / "cifar10" / "cifar-10-python.tar.gz", "cifar-10-batches-py", _cifar10_members()
    )
    _check_cifar10(load_dataset("cifar10", "train", tmp_path), load_dataset("cifar10", "test", tmp_path))
    renamed = archive.rename(tmp_path / "my-copy.tar.gz")
    assert load_dataset(renamed, "test").name == "cifar10/test"
    renamed.rename(archive)
    rows = {r[0]: r for r in available(tmp_path)}
    assert rows["cifar10"] == ("cifar10", str(archive.resolve()), 10, 3)


def test_cifar100_folder_uses_fine_labels(tmp_path: Path) -> None:
    names = [f"class{i:03d}".encode() for i in range(100)]
    members = {
        "train": pickle.dumps(
            {b"fine_labels": [99, 7], b"coarse_labels": [1, 2], b"data": _cifar_images(2, 1)}
        ),
        "test": pickle.dumps({b"fine_labels": [3], b"coarse_labels": [0], b"data": _cifar_images(1, 2)}),
        "meta": pickle.dumps({b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20}),
    }
    _write_dir(tmp_path / "cifar-100-python", members)
    train = load_dataset("cifar100", "train", tmp_path)
    assert train.name == "cifar100/train" and train.y.tolist() == [99, 7]
    assert train.num_classes == 100 and train.classes[99] == "class099"
    assert load_dataset(tmp_path / "cifar-100-python", "test").y.tolist() == [3]
    tar = _write_tar(tmp_path / "c100.tar.gz", "cifar-100-python", members)
    assert load_dataset(tar, "train").name == "cifar100/train"


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_with_forbidden_global_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    members = _cifar10_members()
    members["data_batch_2"] = pickle.dumps({b"data": _Evil(marker), b"labels": [0]})
    folder = _write_dir(tmp_path / "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=r"data_batch_2: refused to unpickle: it refers to \w+\.system"):
        load_dataset(folder, "train")
    assert not marker.exists()
    members["data_batch_2"] = pickle.dumps({b"data": print, b"labels": [0]})
    _write_dir(folder, members)
    with pytest.raises(DataError, match=r"refers to builtins\.print"):
        load_dataset(folder, "train")
    # the archive path goes through the same restricted unpickler
    members["data_batch_2"] = pickle.dumps({b"data": _Evil(marker), b"labels": [0]})
    tar = _write_tar(tmp_path / "evil.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(DataError, match="refused to unpickle"):
        load_dataset(tar, "train")
    assert not marker.exists()


def test_cifar_malformed_batches(tmp_path: Path) -> None:
    members = _cifar10_members()
    folder = _write_dir(tmp_path / "cifar-10-batches-py", members)
    (folder / "test_batch").write_bytes(members["test_batch"][:200])
    with pytest.raises(DataError, match="test_batch: truncated or malformed pickle batch"):
        load_dataset(folder, "test")
    (folder / "test_batch").write_bytes(pickle.dumps({b"labels": [1, 2], b"data": _cifar_images(3, 0)}))
    with pytest.raises(DataError, match="test_batch: 2 labels for 3 images"):
        load_dataset(folder, "test")
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"labels": [1], b"data": np.zeros((1, 3072), np.float32)})
    )
    with pytest.raises(DataError, match="data must be a uint8 array, got float32"):
        load_dataset(folder, "test")
    (folder / "test_batch").write_bytes(pickle.dumps({b"labels": [10], b"data": _cifar_images(1, 0)}))
    with pytest.raises(DataError, match=r"label 10 out of range \[0, 10\)"):
        load_dataset(folder, "test")
    (folder / "test_batch").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="a CIFAR batch must be a dict, got list"):
        load_dataset(folder, "test")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing data_batch_3"):
        load_dataset(folder, "train")
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tar archive at all")
    with pytest.raises(DataError, match="not a readable CIFAR archive"):
        load_dataset(tmp_path / "broken.tar.gz", "train")


# ============================================================================================== IDX
def _idx(arr: np.ndarray, magic: int | None = None) -> bytes:
    magic = (0x0800 | arr.ndim) if magic is None else magic
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def _write_idx(folder: Path, images: dict[str, np.ndarray], labels: dict[str, np.ndarray], *, gz: bool,
               sep: str = "-") -> Path:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        for kind, dims, arr in (("images", 3, images[split]), ("labels", 1, labels[split])):
            path = folder / f"{prefix}-{kind}{sep}idx{dims}-ubyte"
            data = _idx(arr)
            if gz:
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
            else:
                path.write_bytes(data)
    return folder


def _mnist_arrays() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (("train", 6), ("test", 4))}
    labels = {"train": np.array([0, 1, 2, 3, 9, 5], np.uint8), "test": np.array([7, 8, 9, 0], np.uint8)}
    return images, labels


@pytest.mark.parametrize(
    ("gz", "sub", "sep"), [(True, "MNIST/raw", "-"), (False, "mnist", "-"), (False, "mnist", ".")]
)
def test_mnist_idx(tmp_path: Path, gz: bool, sub: str, sep: str) -> None:
    images, labels = _mnist_arrays()
    _write_idx(tmp_path / sub, images, labels, gz=gz, sep=sep)
    for split in ("train", "test"):
        data = load_dataset("mnist", split, tmp_path)
        assert data.name == f"mnist/{split}" and not data.hflip
        assert data.x.shape == (len(labels[split]), 1, 28, 28)
        assert np.array_equal(data.x[:, 0].numpy(), images[split])
        assert data.y.tolist() == labels[split].tolist() and data.y.dtype == torch.int64
        assert data.classes == tuple("0123456789")
    assert load_dataset("mnist", "train", tmp_path, image_size=32).x.shape == (6, 1, 32, 32)
    assert {r[0]: r[2:] for r in available(tmp_path)}["mnist"] == (6, 4)


def test_fashion_mnist_debian_layout(tmp_path: Path) -> None:
    images, labels = _mnist_arrays()
    # Debian's dataset-fashion-mnist installs /usr/share/datasets/fashion-mnist/*.gz
    _write_idx(tmp_path / "usr" / "share" / "datasets" / "fashion-mnist", images, labels, gz=True)
    root = tmp_path / "usr" / "share" / "datasets"
    data = load_dataset("fashion_mnist", "test", root)
    assert data.name == "fashion_mnist/test" and data.classes == FASHION_CLASSES and data.hflip
    assert data.classes[9] == "Ankle boot" and data.y.tolist() == [7, 8, 9, 0]
    assert load_dataset("fashion-mnist", "train", root).name == "fashion_mnist/train"  # alias
    assert load_dataset(root / "fashion-mnist", "train").classes == FASHION_CLASSES  # by path


def test_generic_idx_folder(tmp_path: Path) -> None:
    images, labels = _mnist_arrays()
    folder = _write_idx(tmp_path / "letters", images, labels, gz=False)
    data = load_dataset(folder, "train")
    assert data.name == "letters/train" and data.num_classes == 10 and not data.hflip


def test_idx_malformed(tmp_path: Path) -> None:
    images, labels = _mnist_arrays()
    folder = _write_idx(tmp_path / "mnist", images, labels, gz=False)
    img = folder / "train-images-idx3-ubyte"
    good = img.read_bytes()
    img.write_bytes(good[:-5])
    with pytest.raises(DataError, match=r"truncated IDX file: 4699 of 4704 data bytes"):
        load_dataset("mnist", "train", tmp_path)
    img.write_bytes(good + b"\0\0")
    with pytest.raises(DataError, match="2 bytes after the data"):
        load_dataset("mnist", "train", tmp_path)
    img.write_bytes(good[:10])
    with pytest.raises(DataError, match=r"truncated IDX header \(10 of 16 bytes\)"):
        load_dataset("mnist", "train", tmp_path)
    img.write_bytes(_idx(images["train"], magic=0x00000801))
    with pytest.raises(DataError, match="wrong magic number 0x00000801, expected 0x00000803"):
        load_dataset("mnist", "train", tmp_path)
    img.write_bytes(_idx(images["train"][:5]))
    with pytest.raises(DataError, match=r"6 labels .* for 5 images"):
        load_dataset("mnist", "train", tmp_path)
    img.write_bytes(good)
    (folder / "train-labels-idx1-ubyte").write_bytes(_idx(np.array([0, 1, 2, 3, 4, 10], np.uint8)))
    with pytest.raises(DataError, match=r"mnist/train: label 10 out of range \[0, 10\)"):
        load_dataset("mnist", "train", tmp_path)
    (folder / "train-labels-idx1-ubyte").unlink()
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels["train"]))[:-12])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: cannot read"):
        load_dataset(folder, "train")


# ============================================================================================ GTSRB
def _ppm(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PPM")


def _gtsrb(root: Path) -> dict[str, np.ndarray]:
    """Class 0: a 40x38 image whose ROI is exactly 32x32, class 14: a flat 20x25 image."""
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (38, 40, 3), dtype=np.uint8)  # H=38, W=40
    flat = np.full((25, 20, 3), (10, 200, 30), np.uint8)
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
    train = root / "GTSRB" / "Final_Training" / "Images"
    _ppm(train / "00000" / "00000_00000.ppm", big)
    (train / "00000" / "GT-00000.csv").write_text(header + "00000_00000.ppm;40;38;4;3;36;35;0\n")
    _ppm(train / "00014" / "00000_00000.ppm", flat)
    (train / "00014" / "GT-00014.csv").write_text(header + "00000_00000.ppm;20;25;5;5;15;20;14\n")
    test = root / "GTSRB" / "Final_Test" / "Images"
    _ppm(test / "00000.ppm", flat)
    _ppm(test / "00001.ppm", big)
    (test / "GT-final_test.csv").write_text(
        header + "00000.ppm;20;25;2;2;18;23;42\n00001.ppm;40;38;0;0;40;38;14\n"
    )
    return {"big": big, "flat": flat}


def test_gtsrb(tmp_path: Path) -> None:
    imgs = _gtsrb(tmp_path)
    train = load_dataset("gtsrb", "train", tmp_path)
    assert train.name == "gtsrb/train" and not train.hflip
    assert train.num_classes == 43 and train.classes == GTSRB_CLASSES and train.classes[14] == "Stop"
    assert train.x.shape == (2, 3, 32, 32) and train.y.tolist() == [0, 14]
    assert np.array_equal(train.x[0].permute(1, 2, 0).numpy(), imgs["big"][3:35, 4:36])
    assert (train.x[1] == torch.tensor([10, 200, 30], dtype=torch.uint8)[:, None, None]).all()
    test = load_dataset(tmp_path / "GTSRB", "test", image_size=16)
    assert test.x.shape == (2, 3, 16, 16) and test.y.tolist() == [42, 14]
    assert {r[0]: r[2:] for r in available(tmp_path)}["gtsrb"] == (2, 2)


def test_gtsrb_malformed(tmp_path: Path) -> None:
    _gtsrb(tmp_path)
    gt = tmp_path / "GTSRB" / "Final_Test" / "Images" / "GT-final_test.csv"
    gt.write_text("Filename;Width;Height;Roi.X2;Roi.Y2;ClassId\n00000.ppm;20;25;18;23;1\n")
    with pytest.raises(
        DataError, match=r"GT-final_test.csv: missing columns Roi.X1, Roi.Y1 \(need Filename;"
    ):
        load_dataset("gtsrb", "test", tmp_path)
    gt.write_text("Filename;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n00000.ppm;1;1;x;9;1\n")
    with pytest.raises(DataError, match="line 2: ROI and ClassId must be integers"):
        load_dataset("gtsrb", "test", tmp_path)
    gt.unlink()
    with pytest.raises(DataError, match=r"no GT-final_test\.csv with test labels"):
        load_dataset("gtsrb", "test", tmp_path)
    bad = tmp_path / "GTSRB" / "Final_Training" / "Images" / "00014" / "00000_00000.ppm"
    bad.write_bytes(b"P6\n20 25\n255\n" + b"\0" * 10)
    with pytest.raises(DataError, match=r"00000_00000\.ppm: cannot read image"):
        load_dataset("gtsrb", "train", tmp_path)
    bad.unlink()
    with pytest.raises(DataError, match="listed in the CSV but missing"):
        load_dataset("gtsrb", "train", tmp_path)


# ==================================================================================== image folders
def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_image_folder_with_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    a, b, c = (rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(3))
    _png(tmp_path / "shapes" / "train" / "zebra" / "1.png", a)
    _png(tmp_path / "shapes" / "train" / "apple" / "x.png", b)
    _png(tmp_path / "shapes" / "test" / "zebra" / "2.bmp", c)
    (tmp_path / "shapes" / "train" / "apple" / "notes.txt").write_text("ignored")
    train = load_dataset(tmp_path / "shapes", "train")
    assert train.name == "shapes/train" and train.classes == ("apple", "zebra")
    assert train.x.shape == (2, 3, 6, 5) and train.y.tolist() == [0, 1]  # native size kept
    assert np.array_equal(train.x[0].permute(1, 2, 0).numpy(), b)
    test = load_dataset(str(tmp_path / "shapes"), "test")
    assert test.classes == ("apple", "zebra") and test.y.tolist() == [1]
    assert np.array_equal(test.x[0].permute(1, 2, 0).numpy(), c)


def test_image_folder_modes_and_sizes(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    _png(tmp_path / "g" / "one" / "a.png", grey)
    _png(tmp_path / "g" / "two" / "b.png", np.full((8, 8), 77, np.uint8))
    data = load_dataset(tmp_path / "g", "train")
    assert data.x.shape == (2, 1, 32, 32) and data.y.tolist() == [0, 1]  # all grey, sizes differ -> 32
    assert (data.x[1] == 77).all()
    _png(tmp_path / "g" / "two" / "c.png", np.zeros((8, 8, 3), np.uint8))
    assert load_dataset(tmp_path / "g", "train", image_size=8).x.shape == (3, 3, 8, 8)  # one RGB -> RGB
    with pytest.raises(
        DataError, match="has no test/ sub-folder; a folder of class sub-folders without train/"
    ):
        load_dataset(tmp_path / "g", "test")


def test_image_folder_malformed(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="not a dataset in any supported format"):
        load_dataset(tmp_path / "empty", "train")
    from backdoorkit.data.folder import read_folder
    from backdoorkit.data.sources import LoadOptions

    with pytest.raises(DataError, match="empty: no images found"):
        read_folder(tmp_path / "empty", "train", LoadOptions())
    _png(tmp_path / "split" / "train" / "a" / "1.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="has no test/ sub-folder; put its images in"):
        load_dataset(tmp_path / "split", "test")
    (tmp_path / "split" / "train" / "a" / "2.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"2\.jpg: cannot read image"):
        load_dataset(tmp_path / "split", "train")


# ============================================================================================= npz
def _npz(path: Path, **arrays: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def test_npz_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    nhwc = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    path = _npz(tmp_path / "cifar10" / "cifar10.npz", x_train=nhwc, y_train=np.array([0, 1, 2, 9]),
                x_test=nhwc[:2], y_test=np.array([3, 3]), classes=np.array(CIFAR10_CLASSES))  # fmt: skip
    train = load_dataset("cifar10", "train", tmp_path)
    assert train.name == "cifar10/train" and train.hflip and train.classes == CIFAR10_CLASSES
    assert torch.equal(train.x, torch.from_numpy(nhwc).permute(0, 3, 1, 2))
    assert train.y.tolist() == [0, 1, 2, 9]
    assert load_dataset(path, "test").y.tolist() == [3, 3]
    assert load_dataset("cifar10", "test", tmp_path, image_size=4).x.shape == (2, 3, 4, 4)
    grey = rng.integers(0, 256, (3, 5, 5), dtype=np.uint8)
    _npz(
        tmp_path / "mnist.npz",
        x_train=grey,
        y_train=np.array([0, 4, 1]),
        x_test=grey[:1],
        y_test=np.array([2]),
    )
    mn = load_dataset("mnist", "train", tmp_path)
    assert mn.name == "mnist/train" and not mn.hflip and mn.classes == ("0", "1", "2", "3", "4")
    assert torch.equal(mn.x[:, 0], torch.from_numpy(grey))
    nchw = _npz(tmp_path / "mine.npz", x_train=nhwc.transpose(0, 3, 1, 2), y_train=np.zeros(4, np.int32),
                x_test=nhwc[:1].transpose(0, 3, 1, 2), y_test=np.zeros(1, np.uint8))  # fmt: skip
    mine = load_dataset(nchw, "train")
    assert mine.name == "mine/train" and torch.equal(mine.x, train.x) and mine.classes == ("0",)
    rows = {r[0]: r for r in available(tmp_path)}
    assert rows["cifar10"][1:] == (str(path.resolve()), 4, 2) and rows["mnist"][2:] == (3, 1)


def test_npz_malformed(tmp_path: Path) -> None:
    x = np.zeros((2, 4, 4), np.uint8)
    y = np.array([0, 1])
    p = _npz(tmp_path / "a.npz", x_train=x, y_train=y, x_test=x)
    with pytest.raises(DataError, match=r"a\.npz: missing arrays y_test"):
        load_dataset(p, "train")
    p = _npz(tmp_path / "b.npz", x_train=x.astype(np.float32), y_train=y, x_test=x, y_test=y)
    with pytest.raises(DataError, match="x_train must be uint8, got float32"):
        load_dataset(p, "train")
    p = _npz(tmp_path / "c.npz", x_train=x, y_train=np.array([0.0, 1.0]), x_test=x, y_test=y)
    with pytest.raises(DataError, match="y_train must hold integers, got float64"):
        load_dataset(p, "train")
    p = _npz(tmp_path / "d.npz", x_train=x, y_train=np.array([0, 1], dtype=object), x_test=x, y_test=y)
    with pytest.raises(DataError, match=r"d\.npz: refused to read \(needs pickle"):
        load_dataset(p, "train")
    p = _npz(tmp_path / "e.npz", x_train=x, y_train=y, x_test=x, y_test=y, classes=np.array(["one"]))
    with pytest.raises(DataError, match=r"label 1 out of range \[0, 1\)"):
        load_dataset(p, "train")
    (tmp_path / "f.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(DataError, match=r"f\.npz: not a readable npz file"):
        load_dataset(tmp_path / "f.npz", "train")


# ======================================================================================= resolution
def test_names_paths_and_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset 'cifar100' not found under the data roots"):
        load_dataset("cifar100", "train", tmp_path)
    with pytest.raises(UnknownNameError, match="unknown dataset 'imagenet9'"):
        load_dataset("imagenet9")
    with pytest.raises(DataError, match="no such file or directory"):
        load_dataset(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_dataset("digits", "val")
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match="junk: not a dataset in any supported format"):
        load_dataset(tmp_path / "junk")


def test_environment_root_and_unreadable_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = _mnist_arrays()
    _write_idx(tmp_path / "env" / "mnist", images, labels, gz=True)
    (tmp_path / "env" / "cifar10.npz").write_bytes(b"garbage")
    monkeypatch.setenv("BACKDOORKIT_DATA", str(tmp_path / "env"))
    assert len(load_dataset("mnist", "test")) == 4
    rows = {r[0]: r for r in available()}
    assert rows["mnist"][2:] == (6, 4)
    assert "unreadable" in rows["cifar10"][1] and rows["cifar10"][2:] == (None, None)
