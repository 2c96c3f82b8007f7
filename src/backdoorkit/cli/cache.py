"""``backdoorkit cache list | copy``: what the artefact cache holds, and shipping entries of it.

``copy`` puts entries into a folder that a spec names in ``read_only_caches``: a reproduction can then ship
an artefact that takes hours to compute (a full-width attacker model's label-consistent perturbations, say)
and a run on another machine reads it instead of computing it again.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from backdoorkit.cli.app import app
from backdoorkit.cli.common import JsonOpt, console, emit_json

if TYPE_CHECKING:
    from backdoorkit.cache import ArtifactCache

cache_app = typer.Typer(
    help="List the artefact cache's entries; copy entries into a folder a spec reads as a read-only cache.",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
"""What a kind or a key is made of (no path separators)."""


def _plain(name: str) -> bool:
    """Whether ``name`` is a plain kind or key (letters, digits, ``_.-``; not ``.`` or ``..``)."""
    return bool(_NAME.fullmatch(name)) and name not in {".", ".."}


CacheDirOpt = typer.Option(None, "--cache-dir", help="Artefact cache (default: $BACKDOORKIT_CACHE).")


def _cache(cache_dir: Path | None) -> ArtifactCache:
    from backdoorkit.cache import ArtifactCache
    from backdoorkit.errors import ConfigError

    cache = ArtifactCache(cache_dir)
    if cache_dir is not None and not cache.root.is_dir():
        raise ConfigError(f"--cache-dir {cache_dir}: not a folder")
    return cache


def _summary(meta: dict, width: int = 70) -> str:
    text = json.dumps(meta, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


@cache_app.command("list")
def list_cmd(
    kind: str | None = typer.Option(None, "--kind", help="Only entries of this kind (a cache folder)."),
    cache_dir: Path | None = CacheDirOpt,
    json_out: bool = JsonOpt,
) -> None:
    """List the cache's entries, newest first: kind, key, size, when written, and their metadata."""
    from backdoorkit.errors import ConfigError

    if kind is not None and not _plain(kind):
        raise ConfigError(f"--kind {kind!r}: a kind is a cache folder's plain name, not a path")
    cache = _cache(cache_dir)
    entries = cache.entries(kind)
    if json_out:
        emit_json(
            {
                "entries": [
                    {"kind": e.kind, "key": e.key, "bytes": e.bytes, "modified": e.modified, "meta": e.meta}
                    for e in entries
                ]
            }
        )
        return
    if not entries:
        what = f" of kind {kind}" if kind else ""
        console.print(f"no entries{what} in {cache.root}", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"cache {cache.root}")
    for col in ("kind/key", "MB", "written (UTC)", "metadata"):
        table.add_column(col, overflow="fold", no_wrap=col == "kind/key")
    for e in entries:
        when = datetime.datetime.fromtimestamp(e.modified, datetime.UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(f"{e.kind}/{e.key}", f"{e.bytes / 2**20:.2f}", when, _summary(e.meta))
    console.print(table)


@cache_app.command("copy")
def copy_cmd(
    entries: list[str] = typer.Argument(..., help="KIND/KEY of each entry (see `backdoorkit cache list`)."),
    to: Path = typer.Option(..., "--to", help="The folder to copy into (a spec's read_only_caches entry)."),
    cache_dir: Path | None = CacheDirOpt,
) -> None:
    """Copy ENTRIES into the folder TO (as TO/KIND/KEY.*), for a spec to read with ``read_only_caches``."""
    from backdoorkit.errors import ConfigError

    cache = _cache(cache_dir)
    pairs = []
    for name in entries:
        kind, _, key = name.strip("/").partition("/")
        if not (_plain(kind) and _plain(key)):
            raise ConfigError(f"{name!r}: name an entry as KIND/KEY (see `backdoorkit cache list`)")
        pairs.append((kind, key))
    for kind, key in pairs:
        for path in cache.copy_entry(kind, key, to):
            console.print(f"copied {kind}/{path.name} to {path.parent}", highlight=False)
