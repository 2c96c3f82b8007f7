"""The built-in demo: ``backdoorkit demo [--out DIR]``.

Runs the packaged spec ``experiment/specs/demo.yaml`` - BadNets, Blended and WaNet against no defense
and every defense registered in this installation whose scenario the spec allows (the list grows as
defenses are added), ResNet-18 at width 8 on the embedded digits data, one seed - then prints the table
and writes the report (Markdown, CSV, figures) to ``DIR`` (default ``./runs/demo``).  Results go to
``DIR/results.db``; a second demo run reuses finished cells and cached artefacts.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from backdoorkit.experiment.report import build_table, load_rows, print_summary, write_report
from backdoorkit.experiment.runner import RunSummary, run_experiment
from backdoorkit.experiment.spec import Spec, load_spec, parse_spec

DEMO_SPEC = "demo.yaml"


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
    """Run the demo matrix into ``out`` and write its report; returns the run summary and the files."""
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
        formats=("md", "csv"),
        spec_hash=summary.spec_hash,
        title="backdoorkit demo: digits, ResNet-18 (width 8)",
    )
    if not quiet:
        table = build_table(load_rows(out / "results.db", summary.spec_hash))
        print_summary(table, console)
    return summary, written
