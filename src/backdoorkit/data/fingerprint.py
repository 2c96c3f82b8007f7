"""Content fingerprints of image sets (cache keys that change when the data changes)."""

from __future__ import annotations

import hashlib

import torch

from backdoorkit.data.imageset import ImageSet


def tensor_digest(t: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fingerprint(data: ImageSet) -> str:
    """A 16-hex-digit digest of the images, labels and classes of ``data``."""
    cache = data.meta.get("_fingerprint")
    if isinstance(cache, str):
        return cache
    h = hashlib.sha256()
    h.update(tensor_digest(data.x).encode())
    h.update(tensor_digest(data.y).encode())
    h.update("|".join(data.classes).encode())
    digest = h.hexdigest()[:16]
    data.meta["_fingerprint"] = digest
    return digest
