"""Output paths are checked before any work starts, so a long run never ends on "cannot write"."""

from __future__ import annotations

import os
from pathlib import Path

from backdoorkit.errors import ConfigError


def check_writable(path: Path | str | None, what: str, *, folder: bool = False) -> None:
    """Refuse an output path that cannot be written (one-line :class:`ConfigError`): an existing path
    of the wrong kind (a folder for a file, a file for a folder, a device or pipe), an existing path
    that is not writable, or a nearest existing parent that is not a writable folder.  Nothing is
    created."""
    if path is None:
        return
    path = Path(path).expanduser()
    if path.exists():
        if folder and not path.is_dir():
            raise ConfigError(f"{what} {path}: exists and is not a folder")
        if not folder and path.is_dir():
            raise ConfigError(f"{what} {path}: is a folder, not a file")
        if not folder and not path.is_file():
            raise ConfigError(f"{what} {path}: is not a regular file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"{what} {path}: not writable")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: cannot write into {parent} (not writable)")
