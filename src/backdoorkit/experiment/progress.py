"""Progress of a run: a rich live view (cells done / running / failed, ETA) on a terminal, one line per
finished cell otherwise, nothing with ``quiet``."""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from backdoorkit.experiment.spec import Cell


def describe(cell: Cell) -> str:
    return (
        f"{cell.dataset.label} {cell.model_label} {cell.attack_label} / {cell.defense_label} seed {cell.seed}"
    )


def status_file(folder: Path, key: str) -> Path:
    """The file a job's latest epoch is kept in while it runs (:mod:`backdoorkit.train_report`)."""
    return folder / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.txt"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts and timings of one run; renders itself live when enabled."""

    def __init__(
        self,
        total: int,
        *,
        slots: int = 1,
        quiet: bool = False,
        live: bool | None = None,
        console: Console | None = None,
        skipped: int = 0,
        already: int = 0,
    ) -> None:
        self.total = total
        self.slots = max(1, slots)
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self.live_enabled = (not quiet) and (self.console.is_terminal if live is None else live)
        self.skipped = skipped
        self.already = already
        self.done = 0
        self.failed = 0
        self.gated = 0
        self.elsewhere = 0
        self.running: dict[str, tuple[str, float]] = {}
        self.preparing: dict[str, tuple[str, float]] = {}
        self.durations: list[float] = []
        self.status_dir: Path | None = None  # the runner's folder of the running jobs' latest epochs
        self.failures: list[str] = []
        self.start = time.perf_counter()
        self._lock = threading.Lock()
        self._live: Live | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Progress:
        if self.live_enabled:
            self._live = Live(self, console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    # ------------------------------------------------------------------ events
    def started(self, key: str, text: str, *, prep: bool = False) -> None:
        with self._lock:
            (self.preparing if prep else self.running)[key] = (text, time.perf_counter())

    def prepared(self, key: str, result: dict[str, Any]) -> None:
        with self._lock:
            text, _ = self.preparing.pop(key, ("", 0.0))
        if self.quiet or self.live_enabled:
            return
        what = "ready" if result.get("status") == "done" else f"FAILED {result.get('error')}"
        self.console.print(
            f"[prep] {text}: {what} ({result.get('seconds', 0):.1f}s)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    def taken_elsewhere(self) -> None:
        with self._lock:
            self.elsewhere += 1

    def finished(self, cell: Cell, result: dict[str, Any]) -> None:
        with self._lock:
            self.running.pop(cell.hash, None)
            ok = result.get("status") == "done"
            gated = result.get("status") == "skipped"
            if ok:
                self.done += 1
            elif gated:
                self.gated += 1
            else:
                self.failed += 1
                self.failures.append(f"{describe(cell)}: {result.get('error')}")
            if not gated:  # a gated cell stops after one evaluation: it says nothing of the rest's pace
                self.durations.append(float(result.get("seconds") or 0.0))
            n = self.done + self.failed + self.gated
        if self.quiet or self.live_enabled:
            return
        m = result.get("metrics", {})
        what = (
            f"BA {_pct(m.get('ba'))} ASR {_pct(m.get('asr'))}"
            if ok
            else f"skipped: {result.get('skip_reason')}"
            if gated
            else f"FAILED {result.get('error')}"
        )
        self.console.print(
            f"[{n}/{self.total}] {describe(cell)}: {what} ({result.get('seconds', 0):.1f}s)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    # ------------------------------------------------------------------ view
    def eta(self) -> float | None:
        remaining = self.total - self.done - self.failed - self.gated - self.elsewhere
        if not self.durations or remaining <= 0:
            return None if remaining > 0 else 0.0
        mean = sum(self.durations) / len(self.durations)
        return mean * remaining / self.slots

    def _epoch(self, key: str) -> str:
        """`` · epoch 3/30, ~2:04:00 left`` for a job whose training keeps a status file, else ``""``."""
        if self.status_dir is None:
            return ""
        try:
            line = status_file(self.status_dir, key).read_text().strip()
        except OSError:
            return ""
        return f" · {line}" if line else ""

    def __rich__(self) -> Group:
        with self._lock:
            elapsed = time.perf_counter() - self.start
            eta = self.eta()
            head = Text.assemble(
                ("cells ", "bold"),
                f"{self.total} to run  ",
                ("done ", "green"),
                f"{self.done}  ",
                ("running ", "cyan"),
                f"{len(self.running)}  ",
                ("failed ", "red"),
                f"{self.failed}  ",
                ("skipped ", "yellow"),
                f"{self.skipped + self.gated}  ",
                *((("already done ", "dim"), f"{self.already}  ") if self.already else ()),
                *((("other runs ", "dim"), f"{self.elsewhere}  ") if self.elsewhere else ()),
                f"elapsed {_duration(elapsed)}  ETA {'-' if eta is None else _duration(eta)}",
            )
            table = Table(box=None, show_header=False, pad_edge=False)
            table.add_column(style="cyan")
            table.add_column(justify="right", style="dim")
            now = time.perf_counter()
            for key, (text, t0) in list(self.preparing.items())[:4]:
                table.add_row(f"preparing {text}{self._epoch(key)}", _duration(now - t0))
            for key, (text, t0) in list(self.running.items())[:8]:
                table.add_row(f"{text}{self._epoch(key)}", _duration(now - t0))
            parts: list[Any] = [head, table]
            for line in self.failures[-3:]:
                parts.append(Text(f"failed: {line}", style="red", overflow="ellipsis", no_wrap=True))
            return Group(*parts)


def is_tty() -> bool:
    return sys.stderr.isatty()
