"""Resumable training: per-epoch snapshots that let a stopped :func:`~backdoorkit.train.fit` go on.

A long victim training (a full-width ResNet-18 on CIFAR-10 takes hours on a CPU) should not start
again from scratch because a session, a job or a machine ended.  Inside ``with
resumable_training(folder):`` every *plain* call of :func:`~backdoorkit.train.fit` (see
:func:`is_plain`) writes a snapshot to ``folder`` at the end of each epoch: the weights and buffers,
the optimizer state, the step and epoch counters, the loss / accuracy history, and the state of the
shuffling generator and of the random number generator the augmentation draws from.  The same call made
again in a later process, with the same model initialisation, data and configuration, loads the last
snapshot and trains only the epochs that are left; on one machine the result is bit-identical to an
uninterrupted run (CPU kernels are deterministic; the RNG states are restored exactly).  The snapshot
is deleted once the call finishes.

The n-th plain call inside the block uses ``fit-<n>.pt``, and each snapshot carries a fingerprint of
the call (configuration, step count, data digest, digest of the model as the call received it); a
snapshot whose fingerprint differs (other data, another initialisation, another recipe) is ignored and
overwritten, never loaded into the wrong run.  Snapshots are written with :func:`torch.save` and read
with ``torch.load(weights_only=True)``: only tensors and plain containers, nothing is unpickled.

Only plain calls are snapshotted: no custom loss, callbacks, optimizer factory, schedule, trainable
subset or continued state.  Those carry state outside ``fit`` (shadow models trained inside a loss,
isolation records, a callback's counters) that a snapshot of the model cannot restore, so resuming them
could silently change the result; they simply run from the start again.

The experiment runner trains every clean and victim model inside this block, with the folder
``<cache>/partial/<artefact key>``: ``backdoorkit run --resume`` after an interrupted run picks up a
victim's training at its last finished epoch, and the cell's stage record lists that model under
``resumed`` (its stage seconds then cover only the part trained in that run).  The self-trained attacker
models of the model-based attacks (:func:`backdoorkit.attacks._model_based.attacker_model`) use the same
folder scheme under their own cache key.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backdoorkit.cache import model_digest
from backdoorkit.data.fingerprint import fingerprint
from backdoorkit.data.imageset import ImageSet

FORMAT = 1
"""Snapshot layout version: a snapshot of another version is ignored."""


@dataclass
class _Session:
    folder: Path
    calls: int = 0
    paths: list[Path] = field(default_factory=list)


_SESSION: contextvars.ContextVar[_Session | None] = contextvars.ContextVar("resume_session", default=None)


@contextlib.contextmanager
def resumable_training(folder: str | Path, *, keep: bool = False) -> Iterator[Path]:
    """Snapshot every plain :func:`~backdoorkit.train.fit` call inside the block to ``folder``.

    On leaving the block without an exception, the folder is removed (unless ``keep``); after an
    exception it stays, so the next run of the same code resumes.  Blocks do not nest: an inner block
    replaces the outer one for its duration.
    """
    path = Path(folder)
    token = _SESSION.set(_Session(path))
    try:
        yield path
    finally:
        _SESSION.reset(token)
    if not keep:
        shutil.rmtree(path, ignore_errors=True)


def is_plain(**extension_points: Any) -> bool:
    """Whether a ``fit`` call uses none of the extension points that hold state outside it."""
    aug = extension_points.pop("augmentation", "default")
    return all(v is None or v == () for v in extension_points.values()) and (
        aug is None or (isinstance(aug, str) and aug == "default")
    )


class Snapshot:
    """The snapshot file of one ``fit`` call: :meth:`load` at the start, :meth:`save` at each epoch's
    end, :meth:`finish` when the call is done."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self.broken = False  # a write failed: the run goes on without snapshots

    def load(self) -> dict[str, Any] | None:
        """The saved state when it belongs to this call; ``None`` (with a warning for a stale or
        unreadable file) otherwise."""
        if not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: train from the start and overwrite it
            warnings.warn(f"ignoring unreadable training snapshot {self.path}: {exc}", stacklevel=3)
            return None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT or saved.get("key") != self.key:
            warnings.warn(f"ignoring training snapshot {self.path}: it belongs to another run", stacklevel=3)
            return None
        return saved

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically (a reader never sees half a file).  A failed write (disk full, a
        read-only folder) warns once and the training goes on without snapshots: losing the ability to
        resume must not end the run it protects."""
        if self.broken:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"format": FORMAT, "key": self.key, **state}, tmp)
            os.replace(tmp, self.path)
        except OSError as exc:
            self.broken = True
            tmp.unlink(missing_ok=True)
            warnings.warn(
                f"cannot write training snapshot {self.path} ({exc}); training goes on without snapshots",
                stacklevel=3,
            )

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def snapshot_for(model: nn.Module, data: ImageSet, identity: dict[str, Any]) -> Snapshot | None:
    """The :class:`Snapshot` of the current plain ``fit`` call, or ``None`` outside
    :func:`resumable_training`.  ``identity``: what else determines the run (configuration, steps)."""
    session = _SESSION.get()
    if session is None:
        return None
    key = hashlib.sha256(
        json.dumps(
            {"data": fingerprint(data), "model": model_digest(model), **identity},
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:20]
    path = session.folder / f"fit-{session.calls}.pt"
    session.calls += 1
    return Snapshot(path, key)


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The global RNG states the training step draws from (CPU, and the CUDA device when used)."""
    out = {"rng_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["rng_cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng(saved: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(saved["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in saved:
        torch.cuda.set_rng_state(saved["rng_cuda"], device)


__all__ = [
    "FORMAT",
    "Snapshot",
    "is_plain",
    "restore_rng",
    "resumable_training",
    "rng_states",
    "snapshot_for",
]
