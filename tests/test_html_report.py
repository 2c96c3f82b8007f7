"""The HTML report (issue 11, section 6): one self-contained file (tables with the paper's numbers beside
ours, bar charts, skip-scan panels, the trigger gallery; every image a data URI) that renders offline
in headless Chromium with every image loaded.

The rendering test needs Debian's ``chromium`` (``.ci/run`` installs it when it can) and skips only
where no Chromium can be found or started.  The results database is the synthetic one of
tests/test_experiment_report.py (no training).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from backdoorkit.experiment.report import render, write_report
from test_experiment_report import PAPER_YAML, db  # noqa: F401  (the synthetic results database)

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def dump_dom(html: Path, profile: Path) -> str:
    """The DOM of ``html`` after load (scripts run) as headless Chromium serialises it."""
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium here (.ci/run installs Debian's chromium where it can)")
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",  # root in containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        html.resolve().as_uri(),
    ]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": str(profile)}
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"chromium could not run here: {exc}")
    if done.returncode != 0 or "<html" not in done.stdout:
        pytest.skip(f"chromium could not run here (status {done.returncode}): {done.stderr.strip()[-300:]}")
    return done.stdout


@pytest.fixture()
def html_report(db: Path, tmp_path: Path) -> tuple[Path, dict[str, Path]]:  # noqa: F811
    paper = tmp_path / "table.paper.yaml"
    paper.write_text(PAPER_YAML)
    written = write_report(db, tmp_path / "report", formats=("html", "md"), paper=paper)
    return written["html"], written


def test_html_is_self_contained(html_report: tuple[Path, dict[str, Path]]) -> None:
    path, written = html_report
    text = path.read_text()
    assert path.name == "report.html" and text.startswith("<!DOCTYPE html>")
    # no external resource of any kind: every src is a data URI, no URL anywhere, no link / import
    sources = re.findall(r'\bsrc="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"https?://|<link\b|@import|url\(", text)
    # the main table with ours beside the paper's, the tables per kind, the figures and the gallery
    assert '<table class="main">' in text and "BA (paper)" in text and "A paper, Table 1 (digits)" in text
    assert '<td class="paper">99.1</td>' in text and "<strong>" in text and "†" in text
    assert "Detection (clean vs triggered test images)" in text
    figures = [p.name for k, p in written.items() if k.startswith("figure")]
    n_bars = sum(n.startswith("bars_") for n in figures)
    n_scans = sum(n.startswith("scan_") for n in figures)
    assert n_bars == 2 and n_scans >= 1
    assert "Trigger gallery" in text and "Skip scans" in text
    assert len(sources) == n_bars + n_scans + 1  # + the gallery
    assert "Paper rows without a result here" in text and "Skipped combinations" in text


def test_html_renders_in_headless_chromium(html_report: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    path, _ = html_report
    dom = dump_dom(path, tmp_path / "profile")
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', body.group(0))
    assert loaded and int(loaded.group(2)) >= 4, body.group(0)
    assert loaded.group(1) == loaded.group(2), f"images not loaded: {body.group(0)}"
    assert 'data-images="ok"' in body.group(0)
    assert '<table class="main">' in dom and "digits / badnets" in dom and "BA (paper)" in dom


def test_html_from_the_command_line(db: Path, tmp_path: Path) -> None:  # noqa: F811
    """``backdoorkit report --format html``: to a folder (with figures) and to stdout (self-contained)."""
    from typer.testing import CliRunner

    from backdoorkit.cli.app import app

    runner = CliRunner()
    done = runner.invoke(app, ["report", str(db), "--format", "html", "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    text = (tmp_path / "out" / "report.html").read_text()
    assert '<table class="main">' in text and "data:image/png;base64," in text
    assert (tmp_path / "out" / "bars_digits_badnets.png").is_file()
    shown = runner.invoke(app, ["report", str(db), "--format", "html"])
    assert shown.exit_code == 0 and shown.output.startswith("<!DOCTYPE html>")
    assert "data:image/png;base64," in shown.output
    assert not list(Path.cwd().glob("bars_*.png"))  # stdout rendering writes no figure files
    # without figure files the HTML still embeds its charts
    bare = write_report(db, tmp_path / "bare", formats=("html",), figures=False)
    assert bare["html"].read_text().count("data:image/png;base64,") >= 3
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == ["report.html"]
    assert render(db, "html").count("data:image/png;base64,") >= 3
