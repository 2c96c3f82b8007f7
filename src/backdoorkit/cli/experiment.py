"""``backdoorkit run | report | demo``: the experiment matrix, its reports and the built-in demo."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from backdoorkit.cli.app import app
from backdoorkit.cli.common import check_output, console, err_console


@app.command("run")
def run_cmd(
    spec: Path = typer.Argument(..., help="The experiment spec (YAML)."),
    resume: bool = typer.Option(
        False, "--resume", help="Finish the cells not done yet; never redo finished ones."
    ),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="With --resume: run failed cells again."),
    force: bool = typer.Option(False, "--force", help="Recompute cells already in the database."),
    jobs: int = typer.Option(
        1,
        "--jobs",
        "-j",
        help="Cells run at once: worker processes, or Ray tasks (default: what the cluster holds).",
    ),
    executor: str = typer.Option(
        "local", "--executor", help="local, or ray (needs Ray: the 'ray' extra of backdoorkit)."
    ),
    db: Path | None = typer.Option(None, "--db", help="Results database (default: the spec's db)."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Artefact cache (default: $BACKDOORKIT_CACHE)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no table."),
    epoch_lines: float | None = typer.Option(
        None,
        "--epoch-lines",
        min=0,
        help="Seconds between the epoch lines of a long training (model, epoch, loss, time left) written "
        "to stderr; 0: none. Default: 300 when the progress goes to a file, none on a live terminal.",
    ),
    only: list[str] | None = typer.Option(
        None,
        "--only",
        help="Run only the cells with KEY=VALUE (dataset, model, attack, defense, seed: a label or a "
        "method name; repeatable: other keys narrow, the same key widens). The rest wait for a later run.",
    ),
) -> None:
    """Run the attack x defense x dataset x model x seed matrix of SPEC into a results database.

    Exit status 1 when a cell failed (its error is in the database and the report).
    """
    from backdoorkit.experiment.report import build_table, load_rows, print_summary
    from backdoorkit.experiment.runner import run_experiment

    summary = run_experiment(
        spec,
        db=db,
        resume=resume,
        retry_failed=retry_failed,
        force=force,
        jobs=jobs,
        executor=executor,
        quiet=quiet,
        epoch_lines=epoch_lines,
        cache_dir=cache_dir,
        argv=sys.argv[1:],
        only=only,
    )
    if not quiet:
        print_summary(build_table(load_rows(summary.db, summary.spec_hash)), console)
        console.print(
            f"{summary.done} done, {summary.failed} failed, {summary.already} already done, "
            f"{summary.skipped} skipped, {summary.elsewhere} left to another run"
            + (f", {summary.gated} stopped by min_victim_asr" if summary.gated else "")
            + (f", {summary.unselected} not selected" if summary.unselected else "")
            + f" in {summary.seconds:.1f}s; "
            f"results in {summary.db}",
            highlight=False,
            soft_wrap=True,
        )
    if summary.failed:
        raise typer.Exit(1)


@app.command("report")
def report_cmd(
    db: Path = typer.Argument(..., help="A results database written by `backdoorkit run`."),
    fmt: list[str] | None = typer.Option(
        None, "--format", "-f", help="A report format (md, csv, latex ...; repeatable; default md)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write report.<ext> and the figures here."),
    asr_fail: float = typer.Option(0.2, "--asr-fail", help="A defense fails above this ASR (fraction)."),
    ba_drop: float = typer.Option(10.0, "--ba-drop", help="... or when BA drops more points than this."),
    spec_hash: str | None = typer.Option(None, "--spec", help="Only the cells of this spec hash (prefix)."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="With --out: also draw figures."),
    paper: Path | None = typer.Option(
        None,
        "--paper",
        help="A paper-numbers YAML to show beside ours (default: the spec's paper: entry or "
        "<spec>.paper.yaml, found through the database's runs).",
    ),
    no_paper: bool = typer.Option(False, "--no-paper", help="Show our numbers only."),
) -> None:
    """Report a results database in the papers' layout (rows = defenses, columns = dataset x attack)."""
    from backdoorkit.errors import ConfigError
    from backdoorkit.experiment.report import FORMATS, load_paper, render, write_report

    formats = tuple(dict.fromkeys(fmt or ["md"]))
    for f in formats:
        if f not in FORMATS:
            raise ConfigError(f"--format {f!r}: choose one of {', '.join(FORMATS)}")
    if paper is not None and no_paper:
        raise ConfigError("--paper and --no-paper: choose one")
    check_output(out, "--out", folder=True)
    numbers = dict(paper=load_paper(paper) if paper is not None else None, auto_paper=not no_paper)
    if out is None:
        for f in formats:
            typer.echo(
                render(db, f, asr_fail=asr_fail, ba_drop=ba_drop, spec_hash=spec_hash, **numbers), nl=False
            )
        return
    written = write_report(
        db,
        out,
        formats=formats,
        asr_fail=asr_fail,
        ba_drop=ba_drop,
        spec_hash=spec_hash,
        figures=figures,
        **numbers,
    )
    for path in written.values():
        err_console.print(f"wrote {path}", highlight=False)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Where the database and report go."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Cells run at once."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Run the built-in demo on digits (BadNets, Blended, BadRes x no defense and one method of each
    defense kind) and report it."""
    from backdoorkit.experiment.demo import run_demo

    summary, written = run_demo(out, jobs=jobs, quiet=quiet, console=console)
    if not quiet:
        console.print(
            f"demo: {summary.done + summary.already} cells, {summary.failed} failed, "
            f"{summary.skipped} skipped "
            f"in {summary.seconds:.0f}s; report in {written.get('md')}",
            highlight=False,
            soft_wrap=True,
        )
