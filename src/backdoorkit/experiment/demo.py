"""The built-in demo: ``backdoorkit demo [--out DIR]`` (``make demo``).

Runs the packaged spec ``experiment/specs/demo.yaml`` - attacks that implant on digits (BadNets and
Blended, data poisoning; BadRes, an attack on the structure) against no defense and one method of each
defense kind (SSFT, Trap-and-Replace, STRIP, Neural Cleanse; those not registered in this installation
are skipped with a reason), ResNet-18 at width 8 on the embedded digits data, one seed - then prints
the table and writes the report to ``DIR`` (default ``./runs/demo``): ``report.md``, ``report.csv``,
the figures and the self-contained ``report.html`` (tables, bars, skip scans and the trigger gallery
embedded).  Results go to ``DIR/results.db``; a second demo run reuses finished cells and cached
artefacts.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from backdoorkit.experiment.report import build_table, load_rows, print_summary, write_report
from backdoorkit.experiment.runner import RunSummary, run_experiment
from backdoorkit.experiment.spec import Spec, load_spec, parse_spec

DEMO_SPEC = "demo.yaml"
DEMO_FORMATS = ("md", "csv", "html")
"""Formats the demo writes (``written["html"]`` is the self-contained report ``make demo`` prints)."""


def demo_spec_path() -> Path:
    """Where the packaged demo spec lives."""
    return Path(str(resources.files("backdoorkit.experiment") / "specs" / DEMO_SPEC))


def demo_spec(**overrides: Any) -> Spec:
    """The demo spec, optionally with top-level keys replaced (tests use smaller budgets)."""
    if not overrides:
        return load_spec(demo_spec_path())
    import yaml

    data = yaml.safe_load(demo_spec_path().read_text())
    data.update(overrides)
    return parse_spec(data)


def run_demo(
    out: str | Path = "runs/demo",
    *,
    spec: Spec | None = None,
    jobs: int = 1,
    quiet: bool = False,
    live: bool | None = None,
    cache_dir: str | Path | None = None,
    console: Any = None,
) -> tuple[RunSummary, dict[str, Path]]:
    """Run the demo matrix into ``out`` and write its report (:data:`DEMO_FORMATS`); returns the run
    summary and the files written (``"md"``, ``"csv"``, ``"html"``, ``"figure<i>"``)."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    spec = spec or demo_spec()
    summary = run_experiment(
        spec,
        db=out / "results.db",
        resume=True,
        jobs=jobs,
        quiet=quiet,
        live=live,
        cache_dir=cache_dir,
        argv=["demo"],
    )
    written = write_report(
        out / "results.db",
        out,
        formats=DEMO_FORMATS,
        spec_hash=summary.spec_hash,
        title="backdoorkit demo: digits, ResNet-18 (width 8)",
        auto_paper=False,
    )
    if not quiet:
        table = build_table(load_rows(out / "results.db", summary.spec_hash))
        print_summary(table, console)
    return summary, written
