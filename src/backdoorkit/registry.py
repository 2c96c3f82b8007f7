"""Name -> factory registries for datasets, models, attacks and defenses.

Configs and the CLI refer to components by string.  Every entry records where the method comes from
(``paper``), a one-line summary and its default parameters, so that ``backdoorkit models`` and friends
can print what is available and reports can cite their sources.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from backdoorkit.errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component."""

    name: str
    obj: T
    summary: str = ""
    paper: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A small ordered registry with helpful errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, summary: str = "", paper: str = "", **meta: Any) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``."""

        def deco(obj: T) -> T:
            self.add(name, obj, summary=summary, paper=paper, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, *, summary: str = "", paper: str = "", **meta: Any) -> None:
        key = name.lower()
        if key in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if not summary and getattr(obj, "__doc__", None):
            summary = (obj.__doc__ or "").strip().splitlines()[0]
        self._entries[key] = Entry(key, obj, summary, paper, dict(meta))

    def entry(self, name: str) -> Entry[T]:
        key = str(name).lower()
        if key not in self._entries:
            close = difflib.get_close_matches(key, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint}; available: {', '.join(self._entries) or 'none'}"
            )
        return self._entries[key]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __len__(self) -> int:
        return len(self._entries)
