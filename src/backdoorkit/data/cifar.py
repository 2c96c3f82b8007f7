"""CIFAR-10 and CIFAR-100 from the official "python version" pickle batches (Krizhevsky, 2009).

Layouts read, as a folder or straight from the official archive (members are read with
:mod:`tarfile` in memory, nothing is extracted to disk):

* CIFAR-10: ``cifar-10-batches-py/`` with ``data_batch_1`` ... ``data_batch_5`` (train, all five
  required), ``test_batch`` and ``batches.meta`` (``label_names``); archive ``cifar-10-python.tar.gz``.
* CIFAR-100: ``cifar-100-python/`` with ``train``, ``test`` and ``meta``; we use the 100 *fine*
  labels (``fine_labels``, ``fine_label_names``); archive ``cifar-100-python.tar.gz``.

Each batch is a pickled dict: ``data`` (uint8 ``[N, 3072]``, rows are the R, G and B planes of a
32x32 image) and ``labels`` / ``fine_labels`` (N ints).  The official files were written by Python 2,
so they are read with ``encoding="bytes"`` (keys arrive as ``b"data"``; str keys are accepted too).

Safety: a pickle can run arbitrary code, so batches are read with :class:`BatchUnpickler`, which
resolves only the globals a CIFAR batch needs to rebuild its numpy array (``_reconstruct`` from
``numpy.core.multiarray`` / ``numpy._core.multiarray``, ``numpy.ndarray``, ``numpy.dtype``).  Dicts,
lists, ints and byte strings come from pickle's own opcodes and need no global.  Any other global
(``os.system``, ``builtins.eval``, numpy's protocol-5 ``_frombuffer`` ...) is refused with a
:class:`DataError` before anything is called.

Named sources ``cifar10`` and ``cifar100`` (horizontal flips allowed) look under a data root for
``cifar-10-batches-py/``, ``cifar-10-python.tar.gz`` and the same inside ``cifar10/``, ``CIFAR10/``
or ``cifar-10/`` (likewise for CIFAR-100).  Without the meta file the standard class names are used.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backdoorkit.data.imageset import ImageSet
from backdoorkit.data.loading import PathFormat, register_path_format
from backdoorkit.data.sources import DatasetSource, LoadOptions, register_source
from backdoorkit.data.transforms import resize_uint8
from backdoorkit.errors import DataError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip


def _reconstruct() -> Any:
    core = getattr(np, "_core", None)
    if core is not None and hasattr(core, "multiarray"):
        return core.multiarray._reconstruct
    return np.core.multiarray._reconstruct  # numpy < 2


def _frombuffer() -> Any:
    core = getattr(np, "_core", None)
    if core is not None and hasattr(core, "numeric"):
        return core.numeric._frombuffer
    return np.core.numeric._frombuffer  # numpy < 2


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
    # pickle protocol 5 (Python 3.14's default) rebuilds arrays from an in-band buffer
    ("numpy.core.numeric", "_frombuffer"): _frombuffer(),
    ("numpy._core.numeric", "_frombuffer"): _frombuffer(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals of a CIFAR batch (see the module docstring)."""

    def __init__(self, file: io.BufferedIOBase, where: str) -> None:
        super().__init__(file, encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        obj = ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise DataError(
                f"{self.where}: refused to unpickle: it refers to {module}.{name}, "
                f"which a CIFAR batch never contains"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.where}: refused to unpickle: persistent ids are not allowed")


def load_batch(file: io.BufferedIOBase, where: str) -> dict[str, Any]:
    """Unpickle one CIFAR batch (restricted) into a dict with ``str`` keys."""
    try:
        obj = BatchUnpickler(file, where).load()
    except DataError:
        raise
    except Exception as exc:  # any failure of an untrusted pickle is a malformed file
        detail = f"{type(exc).__name__}: {exc}"
        raise DataError(f"{where}: truncated or malformed pickle batch ({detail})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: a CIFAR batch must be a dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


# ---------------------------------------------------------------------------------------- layout
VARIANTS = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "meta": "batches.meta", "label_key": "labels", "names_key": "label_names",
                "folder": "cifar-10-batches-py", "archive": "cifar-10-python.tar.gz",
                "classes": CIFAR10_CLASSES},
    "cifar100": {"train": ["train"], "test": ["test"], "meta": "meta", "label_key": "fine_labels",
                 "names_key": "fine_label_names", "folder": "cifar-100-python",
                 "archive": "cifar-100-python.tar.gz", "classes": CIFAR100_CLASSES},
}  # fmt: skip
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def variant_of_folder(folder: Path) -> str | None:
    """``"cifar10"`` or ``"cifar100"`` from the files a batch folder holds (``None``: neither)."""
    if (folder / "data_batch_1").is_file() or (folder / "batches.meta").is_file():
        return "cifar10"
    if (folder / "train").is_file() and (folder / "meta").is_file():
        return "cifar100"
    return None


def _variant_of_names(names: set[str]) -> str | None:
    if names & {"data_batch_1", "batches.meta", "test_batch"}:
        return "cifar10"
    if names & {"meta", "train"}:
        return "cifar100"
    return None


def _read_members(path: Path, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """Unpickle the members of a batch folder or archive whose base names are in ``wanted``."""
    out: dict[str, dict[str, Any]] = {}
    if path.is_dir():
        for name in wanted:
            f = path / name
            if f.is_file():
                with f.open("rb") as fh:
                    out[name] = load_batch(fh, str(f))
        return out
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if base in wanted and member.isfile() and base not in out:
                    fh = tar.extractfile(member)
                    if fh is None:
                        continue
                    out[base] = load_batch(io.BytesIO(fh.read()), f"{path}:{member.name}")
    except DataError:
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable CIFAR archive ({exc})") from None
    return out


def _batch_arrays(batch: dict[str, Any], label_key: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    if "data" not in batch or label_key not in batch:
        missing = [k for k in ("data", label_key) if k not in batch]
        raise DataError(f"{where}: batch has no {' or '.join(missing)} entry")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: data must be a uint8 array, got {kind}")
    if data.ndim == 2 and data.shape[1] == 3072:
        data = data.reshape(-1, 3, 32, 32)
    elif data.ndim != 4 or data.shape[1:] != (3, 32, 32):
        raise DataError(f"{where}: data must be [N, 3072] (or [N, 3, 32, 32]), got shape {data.shape}")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{where}: {label_key} must be a list of integers") from None
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataError(f"{where}: {labels.size} labels for {data.shape[0]} images")
    return data, labels


def _class_names(meta: dict[str, Any] | None, spec: dict[str, Any], where: str) -> tuple[str, ...]:
    if meta is None:
        return spec["classes"]
    names = meta.get(spec["names_key"])
    if not isinstance(names, list | tuple) or not names:
        raise DataError(f"{where}: meta file has no {spec['names_key']} list")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)


def read_cifar(
    path: Path, split: str, options: LoadOptions, variant: str | None = None, hflip: bool = True
) -> ImageSet:
    """Read one split of CIFAR-10/100 from a batch folder or official archive.

    ``variant`` (``"cifar10"`` / ``"cifar100"``) is checked against the files; ``None`` detects it.
    Images are 32x32 RGB unless ``options.image_size`` asks for another side.
    """
    path = Path(path)
    if path.is_dir():
        found = variant_of_folder(path)
        if found is None:
            raise DataError(f"{path}: no CIFAR batches (data_batch_1 ... or train/test/meta) in this folder")
    elif path.is_file() and _is_archive(path):
        found = None
    else:
        raise DataError(f"{path}: not a CIFAR batch folder or .tar.gz archive")
    if variant is not None and found is not None and found != variant:
        raise DataError(f"{path}: holds {found} batches, not {variant}")
    kinds = [variant or found] if (variant or found) else list(VARIANTS)
    wanted = {n for k in kinds for n in (*VARIANTS[k][split], VARIANTS[k]["meta"])}
    members = _read_members(path, wanted)
    detected = found or _variant_of_names(set(members))
    if detected is None:
        expected = ", ".join(sorted(n for k in kinds for n in VARIANTS[k][split]))
        raise DataError(f"{path}: archive holds no {variant or 'CIFAR'} {split} batches ({expected})")
    if variant is not None and detected != variant:
        raise DataError(f"{path}: holds {detected} batches, not {variant}")
    spec = VARIANTS[detected]
    missing = [n for n in spec[split] if n not in members]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)} ({detected} {split} split)")
    parts = [_batch_arrays(members[n], spec["label_key"], f"{path}/{n}") for n in spec[split]]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    if options.image_size:
        x = resize_uint8(x, options.image_size)
    classes = _class_names(members.get(spec["meta"]), spec, f"{path}/{spec['meta']}")
    return ImageSet(x, y, classes, f"{detected}/{split}", hflip=hflip)


def count_cifar(path: Path) -> dict[str, int]:
    """``{split: n}`` from the label lists (an archive is decompressed once, nothing is resized)."""
    path = Path(path)
    kinds = [variant_of_folder(path)] if path.is_dir() else list(VARIANTS)
    wanted = {n for k in kinds if k is not None for n in (*VARIANTS[k]["train"], *VARIANTS[k]["test"])}
    members = _read_members(path, wanted)
    variant = kinds[0] if path.is_dir() else _variant_of_names(set(members))
    if variant is None:
        raise DataError(f"{path}: no CIFAR batches found")
    spec = VARIANTS[variant]
    out = {}
    for split in ("train", "test"):
        if all(n in members for n in spec[split]):
            out[split] = sum(
                len(_batch_arrays(members[n], spec["label_key"], f"{path}/{n}")[1]) for n in spec[split]
            )
    return out


def sniff_cifar(path: Path) -> bool:
    """A CIFAR batch folder, or a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive (checked when read)."""
    if path.is_dir():
        return variant_of_folder(path) is not None
    return path.is_file() and _is_archive(path)


# ---------------------------------------------------------------------------------------- sources
def _locator(variant: str) -> Any:
    spec = VARIANTS[variant]
    digits = variant.removeprefix("cifar")
    subdirs = ("", variant, variant.upper(), f"cifar-{digits}", f"CIFAR-{digits}")

    def locate(root: Path) -> Path | None:
        for sub in subdirs:
            base = root / sub if sub else root
            folder = base / spec["folder"]
            if folder.is_dir() and variant_of_folder(folder) == variant:
                return folder
            archive = base / spec["archive"]
            if archive.is_file():
                return archive
        return None

    return locate


def _reader(variant: str) -> Any:
    def read(path: Path, split: str, options: LoadOptions) -> ImageSet:
        return read_cifar(path, split, options, variant=variant, hflip=True)

    return read


CIFAR10 = register_source(
    DatasetSource(
        name="cifar10",
        description="CIFAR-10, 32x32 RGB, 10 classes, 50000/10000 (official python batches/archive)",
        hflip=True,
        locate=_locator("cifar10"),
        read=_reader("cifar10"),
        aliases=("cifar-10",),
    )
)
CIFAR100 = register_source(
    DatasetSource(
        name="cifar100",
        description="CIFAR-100, 32x32 RGB, 100 fine classes, 50000/10000 (official python batches/archive)",
        hflip=True,
        locate=_locator("cifar100"),
        read=_reader("cifar100"),
        aliases=("cifar-100",),
    )
)
register_path_format(
    PathFormat("cifar", sniff_cifar, lambda p, s, o: read_cifar(p, s, o), count=count_cifar, priority=20)
)
