"""Helpers shared by the hardening tests (``test_hardening_*.py``): an isolated environment, the
one-line CLI error check and the bounded-refusal check."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from backdoorkit.cli import main


def isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No data root from the environment, an empty home and cache, and ``tmp_path`` as the folder."""
    monkeypatch.delenv("BACKDOORKIT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BACKDOORKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out = capsys.readouterr()
    return int(done.value.code or 0), out.out, out.err


def cli_error(capsys: pytest.CaptureFixture, *args: str, seconds: float | None = None) -> str:
    """Run the CLI in-process; assert exit 2, exactly one stderr line, no traceback or rich panel (and,
    with ``seconds``, that it took less); return the line."""
    start = time.perf_counter()
    code, out, err = run_cli(capsys, *args)
    took = time.perf_counter() - start
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith("backdoorkit: error: ")
    assert "Traceback" not in err + out and "╭" not in err
    if seconds is not None:
        assert took < seconds, f"{took:.1f} s"
    return lines[0]


def refused_within_bounds(
    load: Callable[[], object], match: str, *, error: type[Exception], peak_mb: int, seconds: float
) -> None:
    """``load()`` raises a one-line ``error`` matching ``match``, within ``peak_mb`` of Python / numpy
    memory and ``seconds``."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(error, match=match) as err:
            load()
        took = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "\n" not in str(err.value)
    assert peak < peak_mb << 20, f"peak {peak / 2**20:.1f} MB"
    assert took < seconds, f"{took:.1f} s"
