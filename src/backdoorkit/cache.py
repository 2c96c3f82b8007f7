"""A content-addressed artefact cache: tensors and models stored as safetensors + JSON.

Keys are hashes of whatever determines an artefact (attack parameters + seed + data fingerprint,
model recipe ...), so nothing is computed twice across cells of a matrix or across runs.  Writes are
atomic (temporary file + rename), so a killed process never leaves a half-written entry, and two
processes writing the same key simply produce the same file twice.

The root is the caller's (``ArtifactCache(root)``, e.g. a spec's ``cache_dir``), else
``$BACKDOORKIT_CACHE`` or ``~/.cache/backdoorkit``.  ``read_only`` folders of the same layout are
consulted, in order, where the root misses and are never written: a reproduction can ship an artefact that
takes hours to compute and little space to keep (a spec's ``read_only_caches``; e.g. the label-consistent
perturbations of a full-width attacker model that trains for two hours on a CPU) by copying its
``<kind>/<key>.safetensors`` and ``.json`` from a cache.  What they hold is read as a cache entry is
(safetensors and JSON, nothing unpickled) and used only where that exact key is asked for.

* :meth:`ArtifactCache.get_or_compute_tensors` / :meth:`ArtifactCache.get_or_compute_model` are the one
  "load, else compute and store" sequence.  A missing or corrupt tensor entry is a miss; a model entry
  whose file exists but cannot be rebuilt raises :class:`~backdoorkit.errors.ModelFileError` (a silent
  miss would retrain it behind the user's back).
* :func:`model_digest` is the one identity of a model instance: class, ``spec``, state dict (weights
  and buffers) and every skip's ``gamma`` / ``beta`` (which are plain attributes, not in the state dict).
* :class:`Memo` is the in-process counterpart for deterministic results that are not artefacts (SSFT's
  skip selection, Neural Cleanse's trigger search): a small LRU that hands out copies.
  :meth:`ArtifactCache.put_json` stores such a result on disk where it is worth keeping across
  processes (SSFT's selection inside the experiment runner).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from backdoorkit.errors import ConfigError

T = TypeVar("T")

#: an entry's JSON metadata, or a callable that returns it once the entry is computed
Meta = dict[str, Any] | Callable[[], dict[str, Any]] | None


def default_cache_dir() -> Path:
    env = os.environ.get("BACKDOORKIT_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/backdoorkit").expanduser()


def hash_key(*parts: Any) -> str:
    """A stable 20-hex-digit hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def model_digest(model: nn.Module) -> str:
    """A 16-hex-digit digest of a model: its class (and ``spec`` when it has one), its state dict
    (weights and buffers, names, shapes, dtypes and bytes) and the ``gamma`` / ``beta`` of every skip
    connection (:func:`backdoorkit.models.skips.get_gammas`, ``get_betas``), so two models that
    compute differently never share a digest."""
    from backdoorkit.models.skips import get_betas, get_gammas

    h = hashlib.sha256(type(model).__qualname__.encode())
    spec = getattr(model, "spec", None)
    if spec is not None:
        h.update(repr(spec).encode())
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy().tobytes())
    skip_scales = {
        "gammas": get_gammas(model, only_changed=False),
        "betas": get_betas(model, only_changed=False),
    }
    h.update(json.dumps(skip_scales, sort_keys=True).encode())
    return h.hexdigest()[:16]


class Memo(Generic[T]):
    """An in-process LRU of at most ``size`` results keyed by a string (e.g. :func:`hash_key` of what
    determines them).  ``get`` returns a deep copy (callers may change it), ``put`` stores one."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, T] = OrderedDict()

    def get(self, key: str) -> T | None:
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return copy.deepcopy(self._items[key])

    def put(self, key: str, value: T) -> None:
        self._items[key] = copy.deepcopy(value)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


@dataclass(frozen=True)
class CacheEntry:
    """One entry of a cache: ``<kind>/<key>.safetensors`` (+ ``.json``), or a JSON-only one."""

    kind: str
    key: str
    bytes: int
    modified: float
    meta: dict[str, Any]


class ArtifactCache:
    """Directory of ``<kind>/<key>.safetensors`` (+ ``.json``) entries."""

    def __init__(self, root: str | Path | None = None, read_only: Sequence[str | Path] = ()) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.read_only = tuple(Path(p).expanduser() for p in read_only)

    def _path(self, kind: str, key: str, suffix: str) -> Path:
        """Where an entry is written (always under the root)."""
        return self.root / kind / f"{key}{suffix}"

    def _found(self, kind: str, key: str, suffix: str) -> Path:
        """Where an entry is read: the root's file, else the first read-only folder's that has it (the
        root's path when none has it)."""
        path = self._path(kind, key, suffix)
        if path.is_file():
            return path
        for folder in self.read_only:
            other = folder / kind / f"{key}{suffix}"
            if other.is_file():
                return other
        return path

    def partial(self, key: str) -> Path:
        """The folder of the per-epoch training snapshots (:mod:`backdoorkit.resume`) of the model that
        will be cached under ``key``."""
        return self.root / "partial" / key

    # ------------------------------------------------------------------ tensors
    def has(self, kind: str, key: str) -> bool:
        return self._found(kind, key, ".safetensors").is_file()

    def put_tensors(
        self, kind: str, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None
    ) -> Path:
        from safetensors.torch import save_file

        path = self._path(kind, key, ".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        self._write_json(self._path(kind, key, ".json"), meta or {})
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save_file(clean, tmp)
        os.replace(tmp, path)
        return path

    def get_tensors(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        path = self._found(kind, key, ".safetensors")
        if not path.is_file():
            return None
        try:
            return load_file(str(path))
        except Exception:  # a corrupt entry is a cache miss
            return None

    def meta(self, kind: str, key: str) -> dict[str, Any] | None:
        path = self._found(kind, key, ".json")
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            return None

    def put_json(self, kind: str, key: str, obj: dict[str, Any]) -> Path:
        """Store a JSON-only entry ``kind/key.json`` (a result that is not tensors); read it with
        :meth:`meta`."""
        path = self._path(kind, key, ".json")
        self._write_json(path, obj)
        return path

    # ------------------------------------------------------------------ models
    def put_model(self, kind: str, key: str, model: nn.Module, meta: dict[str, Any] | None = None) -> Path:
        from backdoorkit.checkpoint import save_model

        path = self._path(kind, key, ".safetensors")
        return save_model(model, path, extra=meta or {})

    def get_model(
        self,
        kind: str,
        key: str,
        device: str | torch.device = "cpu",
        *,
        model: nn.Module | None = None,
    ) -> nn.Module | None:
        """The cached model in eval mode on ``device``, or ``None`` when there is no entry.

        ``model``: load the weights into this module (for models the sidecar alone cannot rebuild,
        e.g. after an attack's ``prepare_model``).  An entry that exists but cannot be loaded raises
        :class:`~backdoorkit.errors.ModelFileError`: only a missing file is a miss.
        """
        from backdoorkit.checkpoint import load_model

        path = self._found(kind, key, ".safetensors")
        if not path.is_file():
            return None
        return load_model(path, model=model, device=device)

    # ------------------------------------------------------------------ get or compute
    def get_or_compute_tensors(
        self,
        kind: str,
        key: str,
        compute: Callable[[], dict[str, torch.Tensor]],
        meta: Meta = None,
        *,
        valid: Callable[[dict[str, torch.Tensor]], bool] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The cached tensors of ``kind/key``, or ``compute()`` stored there (with ``meta``) and returned.

        ``meta``: the JSON sidecar, or a callable returning it, called after ``compute`` (for what only
        computing tells).  ``valid``: a check of a hit (e.g. the names it must hold); a hit that fails
        it is a miss and is overwritten.  On a miss the computed tensors are returned as ``compute``
        made them (device and dtype kept); on a hit they come back on the CPU, as stored.
        """
        hit = self.get_tensors(kind, key)
        if hit is not None and (valid is None or valid(hit)):
            return hit
        tensors = compute()
        self.put_tensors(kind, key, tensors, meta=meta() if callable(meta) else meta)
        return tensors

    def get_or_compute_model(
        self,
        kind: str,
        key: str,
        compute: Callable[[], nn.Module],
        meta: Meta = None,
        *,
        device: str | torch.device = "cpu",
        model: Callable[[], nn.Module] | None = None,
    ) -> nn.Module:
        """The cached model of ``kind/key`` (see :meth:`get_model`), or ``compute()`` stored there.

        ``meta`` as in :meth:`get_or_compute_tensors` (stored as the sidecar's ``extra``).  ``model``:
        a factory of the module to load a hit into (default: rebuild from the sidecar).
        Either way the model is returned in eval mode; a computed one stays on its device.
        """
        loader = model() if model is not None and self.has(kind, key) else None
        hit = self.get_model(kind, key, device=device, model=loader)
        if hit is not None:
            return hit
        fresh = compute()
        self.put_model(kind, key, fresh, meta=meta() if callable(meta) else meta)
        return fresh.eval()

    # ------------------------------------------------------------------ listing and shipping
    def entries(self, kind: str | None = None) -> list[CacheEntry]:
        """The root's entries (``kind``: of that kind only), newest first; training snapshots are not
        entries."""
        out = []
        for path in self.root.glob(f"{kind or '*'}/*.safetensors"):
            if path.parent.name == "partial" or not path.is_file():
                continue
            stat = path.stat()
            meta = self.meta(path.parent.name, path.stem)
            out.append(CacheEntry(path.parent.name, path.stem, stat.st_size, stat.st_mtime, meta or {}))
        for path in self.root.glob(f"{kind or '*'}/*.json"):  # JSON-only entries (put_json)
            if path.parent.name != "partial" and not path.with_suffix(".safetensors").exists():
                stat = path.stat()
                content = self.meta(path.parent.name, path.stem) or {}
                out.append(CacheEntry(path.parent.name, path.stem, stat.st_size, stat.st_mtime, content))
        return sorted(out, key=lambda e: -e.modified)

    def copy_entry(self, kind: str, key: str, folder: str | Path) -> list[Path]:
        """Copy the entry ``kind/key`` (its safetensors and JSON files) into ``folder/kind/``, a folder
        to name in a spec's ``read_only_caches``; returns the files written."""
        import shutil

        sources = [
            p for p in (self._path(kind, key, ".safetensors"), self._path(kind, key, ".json")) if p.is_file()
        ]
        if not sources:
            raise ConfigError(f"no cache entry {kind}/{key} under {self.root}")
        target = Path(folder).expanduser() / kind
        if target.resolve() == sources[0].parent.resolve():
            raise ConfigError(f"{folder}: that is this cache itself; copy into another folder")
        target.mkdir(parents=True, exist_ok=True)
        return [Path(shutil.copy2(src, target / src.name)) for src in sources]

    def model_path(self, kind: str, key: str) -> Path:
        return self._path(kind, key, ".safetensors")

    @staticmethod
    def _write_json(path: Path, obj: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        os.replace(tmp, path)
