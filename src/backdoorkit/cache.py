"""A content-addressed artefact cache: tensors and models stored as safetensors + JSON.

Keys are hashes of whatever determines an artefact (attack parameters + seed + data fingerprint,
model recipe ...), so nothing is computed twice across cells of a matrix or across runs.  Writes are
atomic (temporary file + rename), so a killed process never leaves a half-written entry, and two
processes writing the same key simply produce the same file twice.

The root is ``$BACKDOORKIT_CACHE`` or ``~/.cache/backdoorkit``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn


def default_cache_dir() -> Path:
    env = os.environ.get("BACKDOORKIT_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/backdoorkit").expanduser()


def hash_key(*parts: Any) -> str:
    """A stable 20-hex-digit hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class ArtifactCache:
    """Directory of ``<kind>/<key>.safetensors`` (+ ``.json``) entries."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def _path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / f"{key}{suffix}"

    # ------------------------------------------------------------------ tensors
    def has(self, kind: str, key: str) -> bool:
        return self._path(kind, key, ".safetensors").is_file()

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

        path = self._path(kind, key, ".safetensors")
        if not path.is_file():
            return None
        try:
            return load_file(str(path))
        except Exception:  # a corrupt entry is a cache miss
            return None

    def meta(self, kind: str, key: str) -> dict[str, Any] | None:
        path = self._path(kind, key, ".json")
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            return None

    # ------------------------------------------------------------------ models
    def put_model(self, kind: str, key: str, model: nn.Module, meta: dict[str, Any] | None = None) -> Path:
        from backdoorkit.checkpoint import save_model

        path = self._path(kind, key, ".safetensors")
        return save_model(model, path, extra=meta or {})

    def get_model(self, kind: str, key: str, device: str | torch.device = "cpu") -> nn.Module | None:
        from backdoorkit.checkpoint import load_model
        from backdoorkit.errors import ModelFileError

        path = self._path(kind, key, ".safetensors")
        if not path.is_file():
            return None
        try:
            return load_model(path, device=device)
        except ModelFileError:
            return None

    def model_path(self, kind: str, key: str) -> Path:
        return self._path(kind, key, ".safetensors")

    @staticmethod
    def _write_json(path: Path, obj: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        os.replace(tmp, path)
