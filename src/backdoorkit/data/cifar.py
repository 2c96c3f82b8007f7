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

Safety: a pickle can run arbitrary code, so batches are read with :class:`BatchUnpickler`, whose
``find_class`` resolves a handful of names to our own narrow functions, never to the callables they
name (see :data:`ALLOWED_GLOBALS`):

* ``numpy.(_)core.multiarray._reconstruct`` -> an empty ``ndarray`` of shape ``(0,)`` only (the
  array's data then arrive through ``ndarray.__setstate__``, which checks their length);
* ``numpy.dtype`` -> numeric dtypes only (bool, ints, unsigned, floats; never object, structured
  or sub-array types);
* ``numpy.(_)core.multiarray.scalar`` -> a numeric scalar from exactly ``itemsize`` bytes (the
  ``numpy.int64`` labels of batches re-pickled by Python 3);
* ``_codecs.encode`` -> ``str.encode("latin1")`` only: this is how protocol 2 under Python 3 writes
  ``bytes`` (the raw array data);
* ``numpy.(_)core.numeric._frombuffer`` (protocol 5, in-band buffers) -> ``numpy.frombuffer`` with a
  numeric dtype.

Dicts, lists, ints and byte strings come from pickle's own opcodes and need no global.  Any other
global (``os.system``, ``builtins.eval`` ...; ``numpy.ndarray`` resolves to a token only
``_reconstruct`` accepts) and any
persistent id is refused with a :class:`DataError` before anything is called.  An archive is
decompressed as a stream through :class:`~.limits.BoundedReader`, so it inflates to at most
``100 x its size + 1 MiB`` (:mod:`.limits`); ``label_names`` may list at most 100,000 classes.

Named sources ``cifar10`` and ``cifar100`` (horizontal flips allowed) look under a data root for
``cifar-10-batches-py/``, ``cifar-10-python.tar.gz`` and the same inside ``cifar10/``, ``CIFAR10/``
or ``cifar-10/`` (likewise for CIFAR-100).  Without the meta file the standard class names are used.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backdoorkit.data import limits
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


class _Refused(Exception):
    """A restricted constructor got arguments no CIFAR batch contains (turned into a DataError)."""


def _numeric(spec: Any) -> np.dtype:
    if isinstance(spec, bytes):
        spec = spec.decode("latin1")
    dtype = spec if isinstance(spec, np.dtype) else None
    if dtype is None:
        if not isinstance(spec, str) or len(spec) > 8:
            raise _Refused(f"dtype {spec!r}")
        dtype = np.dtype(spec)
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise _Refused(f"dtype {dtype}")
    return dtype


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype`` for numeric types only; a fresh instance, as ``__setstate__`` will mutate it."""
    return np.dtype(_numeric(spec), align=bool(align), copy=True)


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` as an argument of ``_reconstruct``; calling it is refused, so a
    pickle cannot call ``ndarray(shape)`` with a shape of its choosing."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _Refused("numpy.ndarray called directly")


_NDARRAY = _NdarrayToken()


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """``numpy``'s ``_reconstruct`` restricted to what ``ndarray.__reduce__`` writes: an empty array."""
    if subtype is not _NDARRAY or tuple(shape) != (0,) or typecode not in (b"b", "b"):
        raise _Refused(f"_reconstruct({getattr(subtype, '__name__', subtype)!r}, {shape!r}, {typecode!r})")
    return np.ndarray((0,), dtype=np.int8)


def _scalar(dtype: Any, data: Any = None) -> Any:
    """A numeric numpy scalar from exactly ``itemsize`` bytes (``numpy.int64`` labels)."""
    dt = _numeric(dtype)
    if isinstance(data, str):
        data = data.encode("latin1")
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise _Refused(f"scalar of {dt} from {type(data).__name__}")
    return np.frombuffer(data, dtype=dt)[0]


def _latin1(text: Any, encoding: Any = "utf-8", *_: Any) -> bytes:
    """``_codecs.encode`` as protocol 2 writes ``bytes`` under Python 3: latin-1 text only."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "") != "latin1":
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Protocol 5's in-band array rebuild, numeric dtypes only."""
    return np.frombuffer(buf, dtype=_numeric(dtype)).reshape(shape, order=order)


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
    ("numpy", "dtype"): _dtype,
    ("numpy", "ndarray"): _NDARRAY,
    ("_codecs", "encode"): _latin1,
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
    except _Refused as exc:
        raise DataError(f"{where}: refused to unpickle: {exc} is not part of a CIFAR batch") from None
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


_COMPRESSED: tuple[tuple[bytes, Any], ...] = (
    (b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
)


@contextlib.contextmanager
def _open_tar(path: Path) -> Iterator[tarfile.TarFile]:
    """A tar archive read as a stream, inflating to at most the budget of :mod:`.limits`."""
    size = path.stat().st_size
    with path.open("rb") as f, contextlib.ExitStack() as stack:
        magic = f.read(6)
        f.seek(0)
        raw: Any = f
        for prefix, opener in _COMPRESSED:
            if magic.startswith(prefix):
                raw = stack.enter_context(opener(f))
                break
        bounded = limits.BoundedReader(raw, limits.inflation_budget(size), str(path), size)
        with tarfile.open(fileobj=io.BufferedReader(bounded), mode="r|") as tar:
            yield tar


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
        with _open_tar(path) as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if base in wanted and member.isfile() and base not in out:
                    fh = tar.extractfile(member)
                    if fh is None:
                        continue
                    out[base] = load_batch(io.BytesIO(fh.read()), f"{path}:{member.name}")
    except DataError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
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
    limits.check_class_count(len(names), where)
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
