"""Reports in the papers' layout: ``backdoorkit report results.db [--format md|csv|latex] [--out DIR]``.

The main table has one row per defense (``none`` first, then a "clean model" reference row with the
clean BA) and one column group per dataset x attack (x model, x clean fraction when the database holds
several), each with the sub-columns BA and ASR in percent; with several seeds a cell shows
``mean ± std`` (sample standard deviation).  Marks:

* a defense *fails* in a column (``†``) when its ASR exceeds ``asr_fail`` (default 20 %) or its BA is
  more than ``ba_drop`` points (default 10) below the no-defense BA of the same column;
* the best defense per column is in bold (highest BA, lowest ASR; the ``none`` and clean rows do not
  compete).

Detectors appear with the BA / ASR of the model behind them at their own threshold, and again in a
detection table (AUROC, TPR at 1 % / 5 % FPR); isolation defenses also get precision / recall of the
isolated set; inspectors a verdict table.  Skipped combinations are listed with their reasons and
failed cells with their error line.  Figures (:mod:`backdoorkit.viz.report_figures`): BA / ASR bars per
column group and, when a defense recorded a skip scan (``info["scan"]``), its skip-scan curves.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backdoorkit.errors import ConfigError

NO_DEFENSE = "none"
CLEAN_ROW = "(clean model)"
FAIL_MARK = "†"
FORMATS = ("md", "csv", "latex")
SUFFIX = {"md": "md", "csv": "csv", "latex": "tex"}


@dataclass
class Stat:
    """Mean and sample standard deviation (fractions) over the seeds that finished."""

    values: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None

    def text(self, *, plus_minus: str = "±") -> str:
        if self.mean is None:
            return "–"
        s = f"{100 * self.mean:.1f}"
        if self.std is not None:
            s += f" {plus_minus} {100 * self.std:.1f}"
        return s


@dataclass
class Entry:
    """One defense in one column group."""

    ba: Stat = field(default_factory=Stat)
    asr: Stat = field(default_factory=Stat)
    asr_q: Stat = field(default_factory=Stat)
    clean_ba: Stat = field(default_factory=Stat)
    auroc: Stat = field(default_factory=Stat)
    tpr1: Stat = field(default_factory=Stat)
    tpr5: Stat = field(default_factory=Stat)
    iso_p: Stat = field(default_factory=Stat)
    iso_r: Stat = field(default_factory=Stat)
    infected: Stat = field(default_factory=Stat)
    target_ok: Stat = field(default_factory=Stat)
    kind: str = "none"
    failed_cells: int = 0
    pending_cells: int = 0
    fail_asr: bool = False
    fail_ba: bool = False
    best_ba: bool = False
    best_asr: bool = False

    @property
    def failure(self) -> bool:
        return self.fail_asr or self.fail_ba


@dataclass
class Group:
    key: tuple[Any, ...]
    title: str
    dataset: str
    model: str
    attack: str
    clean_fraction: float | None


@dataclass
class ReportTable:
    """Everything a report shows, computed once from the database rows."""

    groups: list[Group]
    defenses: list[str]
    entries: dict[tuple[str, tuple[Any, ...]], Entry]
    skipped: list[tuple[str, str]]
    failed: list[tuple[str, str]]
    pending: int
    seeds: int
    superseded: int
    asr_fail: float
    ba_drop: float
    rows: list[dict[str, Any]]

    def entry(self, defense: str, group: Group) -> Entry | None:
        return self.entries.get((defense, group.key))

    @property
    def table_rows(self) -> list[str]:
        """Row labels of the main table: defenses, with the clean reference after ``none``."""
        out = list(self.defenses)
        if any(self.entries.get((CLEAN_ROW, g.key)) for g in self.groups):
            out.insert(1 if out and out[0] == NO_DEFENSE else 0, CLEAN_ROW)
        return out

    def kind_rows(self, kind: str) -> list[str]:
        return [
            d
            for d in self.defenses
            if any((e := self.entries.get((d, g.key))) and e.kind == kind for g in self.groups)
        ]


# ---------------------------------------------------------------------------------------- building
def load_rows(db: str | Path, spec_hash: str | None = None) -> list[dict[str, Any]]:
    """The rows of a results database (optionally of one spec hash prefix)."""
    from backdoorkit.experiment.store import ResultStore

    path = Path(db).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such results database")
    import sqlite3

    try:
        store = ResultStore(path)
        try:
            return store.rows(spec_hash=spec_hash)
        finally:
            store.close()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path}: not a results database ({exc})") from None


def _coords(r: dict[str, Any]) -> str:
    s = f"{r['dataset']} / {r['model']} / {r['attack']} / {r['defense']} (seed {r['seed']}"
    if r.get("scenario"):
        s += f", {r['scenario']}"
    return s + ")"


def latest_per_coordinates(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One row per coordinates (dataset, model, attack, defense, seed, clean fraction): the latest.

    Several rows share coordinates when specs that differ in something the labels do not show (a
    training budget, say) wrote to the same database; only the most recent one is reported (pass a
    spec hash to choose).  Returns the rows kept and how many were dropped.
    """
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        key = (r["dataset"], r["model"], r["attack"], r["defense"], r["seed"], r.get("clean_fraction"))
        when = r.get("finished_at") or r.get("started_at") or r.get("created_at") or 0.0
        old = best.get(key)
        if old is None or when >= (
            old.get("finished_at") or old.get("started_at") or old.get("created_at") or 0.0
        ):
            best[key] = r
    chosen = {id(b) for b in best.values()}
    kept = [r for r in rows if id(r) in chosen]
    return kept, len(rows) - len(kept)


def build_table(rows: list[dict[str, Any]], *, asr_fail: float = 0.2, ba_drop: float = 10.0) -> ReportTable:
    """Aggregate database rows into the report table (``asr_fail`` a fraction, ``ba_drop`` in points)."""
    if not 0 <= asr_fail <= 1:
        raise ConfigError(f"--asr-fail {asr_fail}: a fraction in [0, 1] (0.2 = 20 %)")
    if ba_drop < 0:
        raise ConfigError(f"--ba-drop {ba_drop}: points of accuracy, >= 0")
    rows, superseded = latest_per_coordinates(rows)
    # a skip whose coordinates have a result (recorded before a method was registered) is stale
    ran = {
        (r["dataset"], r["model"], r["attack"], r["defense"], r["seed"])
        for r in rows
        if r["status"] != "skipped"
    }
    models = {r["model"] for r in rows}
    fractions = {r.get("clean_fraction") for r in rows}
    groups: dict[tuple[Any, ...], Group] = {}
    defenses: list[str] = []
    entries: dict[tuple[str, tuple[Any, ...]], Entry] = {}
    skipped: dict[tuple[str, str], list[int]] = {}
    failed: list[tuple[str, str]] = []
    pending = 0
    seeds: set[int] = set()
    for r in rows:
        status = r["status"]
        if status == "skipped":
            if (r["dataset"], r["model"], r["attack"], r["defense"], r["seed"]) in ran:
                continue
            what = f"{r['dataset']} / {r['attack']} / {r['defense']}" + (
                f" / {r['model']}" if len(models) > 1 else ""
            )
            skipped.setdefault((what, r.get("skip_reason") or ""), []).append(r["seed"])
            continue
        key = (r["dataset"], r["model"], r["attack"], r.get("clean_fraction"))
        if key not in groups:
            parts = [r["dataset"], r["attack"]]
            if len(models) > 1:
                parts.insert(1, r["model"])
            if len(fractions) > 1:
                parts.append(f"clean {100 * float(r.get('clean_fraction') or 0):g}%")
            groups[key] = Group(
                key, " / ".join(parts), r["dataset"], r["model"], r["attack"], r.get("clean_fraction")
            )
        d = r["defense"]
        if d not in defenses:
            defenses.append(d)
        e = entries.setdefault((d, key), Entry(kind=r.get("defense_kind") or "none"))
        if status == "failed":
            e.failed_cells += 1
            failed.append((_coords(r), r.get("error") or "?"))
            continue
        if status in ("pending", "running"):
            e.pending_cells += 1
            pending += 1
            continue
        seeds.add(int(r["seed"]))
        for attr, col in (
            ("ba", "ba"),
            ("asr", "asr"),
            ("asr_q", "asr_quantized"),
            ("auroc", "auroc"),
            ("tpr1", "tpr_at_1fpr"),
            ("tpr5", "tpr_at_5fpr"),
            ("iso_p", "iso_precision"),
            ("iso_r", "iso_recall"),
            ("clean_ba", "clean_ba"),
        ):
            v = r.get(col)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                getattr(e, attr).values.append(float(v))
        info = r.get("info") if isinstance(r.get("info"), dict) else {}
        verdict = info.get("verdict") if isinstance(info.get("verdict"), dict) else None
        if verdict is not None and verdict.get("infected") is not None:
            e.infected.values.append(float(bool(verdict["infected"])))
        if info.get("target_correct") is not None:
            e.target_ok.values.append(float(bool(info["target_correct"])))
    # the clean reference: one value per seed (every defense row of a seed carries the same clean BA)
    for key in groups:
        per_seed: dict[int, float] = {}
        for r in rows:
            if (
                r["status"] == "done"
                and r.get("clean_ba") is not None
                and (r["dataset"], r["model"], r["attack"], r.get("clean_fraction")) == key
            ):
                per_seed.setdefault(int(r["seed"]), float(r["clean_ba"]))
        if per_seed:
            entries[(CLEAN_ROW, key)] = Entry(ba=Stat(list(per_seed.values())), kind="clean")
        else:
            entries.pop((CLEAN_ROW, key), None)
    if NO_DEFENSE in defenses:
        defenses.remove(NO_DEFENSE)
        defenses.insert(0, NO_DEFENSE)
    table = ReportTable(
        list(groups.values()),
        defenses,
        entries,
        [
            (what, reason + (f" (seeds {', '.join(map(str, sorted(set(s))))})" if len(set(s)) > 1 else ""))
            for (what, reason), s in skipped.items()
        ],
        failed,
        pending,
        len(seeds),
        superseded,
        asr_fail,
        ba_drop,
        rows,
    )
    _mark(table)
    return table


def _mark(table: ReportTable) -> None:
    """Failure marks and best-per-column flags."""
    for g in table.groups:
        base = table.entry(NO_DEFENSE, g)
        base_ba = base.ba.mean if base is not None else None
        competitors = []
        for d in table.defenses:
            e = table.entry(d, g)
            if e is None or d == NO_DEFENSE or e.kind == "inspector":
                continue
            if e.asr.mean is not None and e.asr.mean > table.asr_fail:
                e.fail_asr = True
            if e.ba.mean is not None and base_ba is not None and 100 * (base_ba - e.ba.mean) > table.ba_drop:
                e.fail_ba = True
            competitors.append(e)
        if len(competitors) >= 2:
            bas = [e.ba.mean for e in competitors if e.ba.mean is not None]
            asrs = [e.asr.mean for e in competitors if e.asr.mean is not None]
            for e in competitors:
                if bas and e.ba.mean is not None and round(100 * e.ba.mean, 1) == round(100 * max(bas), 1):
                    e.best_ba = True
                if (
                    asrs
                    and e.asr.mean is not None
                    and round(100 * e.asr.mean, 1) == round(100 * min(asrs), 1)
                ):
                    e.best_asr = True


# ---------------------------------------------------------------------------------------- cell text
def _cell(e: Entry | None, which: str, style: str) -> str:
    """Text of one BA or ASR cell in ``md``, ``latex`` or ``plain`` style."""
    if e is None:
        return "–"
    stat: Stat = e.ba if which == "ba" else e.asr
    if stat.mean is None:
        if e.failed_cells:
            return "failed"
        if e.pending_cells:
            return "pending"
        return "–"
    text = stat.text(plus_minus="$\\pm$" if style == "latex" else "±")
    best = e.best_ba if which == "ba" else e.best_asr
    fail = e.fail_ba if which == "ba" else e.fail_asr
    if style == "md":
        text = f"**{text}**" if best else text
        text += FAIL_MARK if fail else ""
    elif style == "latex":
        text = f"\\textbf{{{text}}}" if best else text
        text += "$^\\dagger$" if fail else ""
    else:
        text += FAIL_MARK if fail else ""
    return text


def _legend(table: ReportTable) -> str:
    parts = [
        f"BA and ASR in %{'; mean ± std over ' + str(table.seeds) + ' seeds' if table.seeds > 1 else ''}.",
        f"{FAIL_MARK} defense failure: ASR > {100 * table.asr_fail:g}% or BA more than "
        f"{table.ba_drop:g} points "
        "below no defense.",
        "Bold: best defense per column (highest BA, lowest ASR).",
    ]
    if any(
        table.entry(d, g) and table.entry(d, g).kind == "detector"
        for d in table.defenses
        for g in table.groups
    ):
        parts.append(
            "Detectors: BA/ASR of the model behind the detector at its own threshold "
            "(flagged inputs rejected)."
        )
    return " ".join(parts)


# ---------------------------------------------------------------------------------------- markdown
def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(_md_escape(h) for h in header) + " |",
        "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def to_markdown(table: ReportTable, *, title: str = "Backdoor defenses", figures: Iterable[Path] = ()) -> str:
    """The whole report as Markdown."""
    out = [f"# {title}", ""]
    if not table.groups:
        out.append("No finished cells yet.")
    else:
        header = ["Defense"] + [f"{g.title} {m}" for g in table.groups for m in ("BA", "ASR")]
        body = []
        for d in table.table_rows:
            row = [d]
            for g in table.groups:
                e = table.entry(d, g)
                row += [_cell(e, "ba", "md"), "–" if d == CLEAN_ROW else _cell(e, "asr", "md")]
            body.append(row)
        out += [_md_table(header, body), "", _legend(table), ""]
    out += _md_extras(table)
    figs = list(figures)
    if figs:
        out += ["## Figures", ""]
        out += [f"![{p.stem}]({p.name})" for p in figs]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _extra_tables(table: ReportTable) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, body)`` of the detection, isolation and inspection tables (plain text cells)."""
    out = []
    dets = table.kind_rows("detector")
    if dets:
        header = ["Detector"] + [
            f"{g.title} {m}" for g in table.groups for m in ("AUROC", "TPR@1%", "TPR@5%")
        ]
        body = [
            [d]
            + [
                getattr(table.entry(d, g), a).text() if table.entry(d, g) else "–"
                for g in table.groups
                for a in ("auroc", "tpr1", "tpr5")
            ]
            for d in dets
        ]
        out.append(("Detection (clean vs triggered test images)", header, body))
    isos = [
        d
        for d in table.kind_rows("training")
        if any(table.entry(d, g) and table.entry(d, g).iso_p.n for g in table.groups)
    ]
    if isos:
        header = ["Defense"] + [f"{g.title} {m}" for g in table.groups for m in ("precision", "recall")]
        body = [
            [d]
            + [
                getattr(table.entry(d, g), a).text() if table.entry(d, g) else "–"
                for g in table.groups
                for a in ("iso_p", "iso_r")
            ]
            for d in isos
        ]
        out.append(("Isolation (isolated rows vs poisoned rows)", header, body))
    insp = table.kind_rows("inspector")
    if insp:
        header = ["Inspector"] + [
            f"{g.title} {m}" for g in table.groups for m in ("infected", "target right")
        ]
        body = [
            [d]
            + [
                getattr(table.entry(d, g), a).text() if table.entry(d, g) else "–"
                for g in table.groups
                for a in ("infected", "target_ok")
            ]
            for d in insp
        ]
        out.append(("Inspection (% of models called infected; % naming the right target)", header, body))
    return out


def _md_extras(table: ReportTable) -> list[str]:
    out: list[str] = []
    for title, header, body in _extra_tables(table):
        out += [f"## {title}", "", _md_table(header, body), ""]
    if table.skipped:
        out += ["## Skipped combinations", ""]
        out += [f"- {what}: {reason}" for what, reason in table.skipped]
        out.append("")
    if table.failed:
        out += ["## Failed cells", ""]
        out += [f"- {what}: `{err}`" for what, err in table.failed]
        out.append("")
    if table.pending:
        out += [f"{table.pending} cells not finished yet (pending or running).", ""]
    if table.superseded:
        out += [
            f"{table.superseded} older results with the same coordinates are not shown "
            "(report one spec with --spec HASH).",
            "",
        ]
    return out


# ---------------------------------------------------------------------------------------- csv
CSV_FIELDS = (
    "dataset",
    "model",
    "attack",
    "clean_fraction",
    "defense",
    "kind",
    "seeds",
    "ba_pct",
    "ba_pct_std",
    "asr_pct",
    "asr_pct_std",
    "asr_quantized_pct",
    "clean_ba_pct",
    "auroc",
    "tpr_at_1fpr",
    "tpr_at_5fpr",
    "iso_precision",
    "iso_recall",
    "fail_asr",
    "fail_ba",
    "best_ba",
    "best_asr",
    "failed_cells",
    "pending_cells",
)


def to_csv(table: ReportTable) -> str:
    """One line per defense x column group (tidy), BA / ASR in percent."""

    def pct(v: float | None) -> str:
        return "" if v is None else f"{100 * v:.2f}"

    def num(v: float | None) -> str:
        return "" if v is None else f"{v:.4f}"

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for g in table.groups:
        for d in table.defenses:
            e = table.entry(d, g)
            if e is None:
                continue
            clean = table.entry(CLEAN_ROW, g)
            w.writerow(
                [
                    g.dataset,
                    g.model,
                    g.attack,
                    "" if g.clean_fraction is None else g.clean_fraction,
                    d,
                    e.kind,
                    e.ba.n,
                    pct(e.ba.mean),
                    pct(e.ba.std),
                    pct(e.asr.mean),
                    pct(e.asr.std),
                    pct(e.asr_q.mean),
                    pct(clean.ba.mean if clean else None),
                    num(e.auroc.mean),
                    num(e.tpr1.mean),
                    num(e.tpr5.mean),
                    num(e.iso_p.mean),
                    num(e.iso_r.mean),
                    int(e.fail_asr),
                    int(e.fail_ba),
                    int(e.best_ba),
                    int(e.best_asr),
                    e.failed_cells,
                    e.pending_cells,
                ]
            )
    return buf.getvalue()


# ---------------------------------------------------------------------------------------- latex
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: ReportTable, *, caption: str | None = None) -> str:
    """The main table as a booktabs ``tabular`` (column groups with ``\\multicolumn``)."""
    n = len(table.groups)
    lines = []
    if caption:
        lines += ["\\begin{table}[t]", "\\centering", f"\\caption{{{latex_escape(caption)}}}"]
    lines.append("\\begin{tabular}{l" + " rr" * n + "}")
    lines.append("\\toprule")
    lines.append(
        " & ".join([""] + [f"\\multicolumn{{2}}{{c}}{{{latex_escape(g.title)}}}" for g in table.groups])
        + " \\\\"
    )
    if n:
        lines.append(" ".join(f"\\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(n)))
    lines.append(" & ".join(["Defense"] + ["BA", "ASR"] * n) + " \\\\")
    lines.append("\\midrule")
    for d in table.table_rows:
        cells = [latex_escape(d)]
        for g in table.groups:
            e = table.entry(d, g)
            ba = _cell(e, "ba", "latex")
            asr = "--" if d == CLEAN_ROW else _cell(e, "asr", "latex")
            cells += [ba.replace("–", "--"), asr.replace("–", "--")]
        lines.append(" & ".join(cells) + " \\\\")
    lines.append("\\bottomrule")
    lines.append("\\end{tabular}")
    if caption:
        lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- terminal
def to_rich(table: ReportTable, *, title: str = "BA / ASR (%)") -> Any:
    """The main table as a :class:`rich.table.Table` (bold best, red failures)."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left")
    t.add_column("defense", style="bold", no_wrap=True)
    for g in table.groups:
        t.add_column(f"{g.title}\nBA", justify="right")
        t.add_column("\nASR", justify="right")
    for d in table.table_rows:
        cells: list[Any] = [d]
        for g in table.groups:
            e = table.entry(d, g)
            for which in ("ba", "asr"):
                if d == CLEAN_ROW and which == "asr":
                    cells.append("–")
                    continue
                text = _cell(e, which, "plain")
                style = ""
                if e is not None and (e.best_ba if which == "ba" else e.best_asr):
                    style += " bold"
                if e is not None and (e.fail_ba if which == "ba" else e.fail_asr):
                    style += " red"
                cells.append(Text(text, style=style.strip()))
        t.add_row(*cells)
    return t


def print_summary(table: ReportTable, console: Any = None) -> None:
    """The table, skips and failures on the terminal."""
    from rich.console import Console

    console = console or Console()
    if table.groups:
        console.print(to_rich(table))
        console.print(_legend(table), style="dim", soft_wrap=True)
    else:
        console.print("no finished cells")
    for title, header, body in _extra_tables(table):
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for h in header:
            t.add_column(h)
        for row in body:
            t.add_row(*row)
        console.print(t)
    if table.skipped:
        console.print(f"skipped ({len(table.skipped)}):", style="yellow")
        for what, reason in table.skipped:
            console.print(f"  {what}: {reason}", markup=False, highlight=False, soft_wrap=True)
    if table.failed:
        console.print(f"failed ({len(table.failed)}):", style="red")
        for what, err in table.failed:
            console.print(f"  {what}: {err}", markup=False, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------- files
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")[:80] or "x"


def write_figures(table: ReportTable, out: Path) -> list[Path]:
    """BA/ASR bars per column group and skip-scan curves where defenses recorded a scan."""
    from backdoorkit.viz import report_figures as figs

    paths: list[Path] = []
    for g in table.groups:
        labels, ba, ba_err, asr, asr_err = [], [], [], [], []
        for d in table.defenses:
            e = table.entry(d, g)
            if e is None or e.ba.mean is None or e.kind == "inspector":
                continue
            labels.append(d)
            ba.append(100 * e.ba.mean)
            ba_err.append(100 * (e.ba.std or 0.0))
            asr.append(float("nan") if e.asr.mean is None else 100 * e.asr.mean)
            asr_err.append(100 * (e.asr.std or 0.0))
        if labels:
            paths.append(
                figs.ba_asr_bars(
                    labels,
                    ba,
                    ba_err,
                    asr,
                    asr_err,
                    out / f"bars_{_slug(g.title)}.png",
                    title=g.title,
                    asr_fail=100 * table.asr_fail,
                )
            )
    seen: set[tuple[str, str]] = set()
    for r in table.rows:
        info = r.get("info") if isinstance(r.get("info"), dict) else {}
        scan = info.get("scan") if r["status"] == "done" else None
        if not isinstance(scan, list) or not scan:
            continue
        # the scan is the defense's own (on its clean data, e.g. with a surrogate trigger)
        where = f"{r['dataset']} / {r['attack']} (seed {r['seed']})"
        title = f"{r['defense']} skip scan on the defender's data: {where}"
        key = (r["defense"], f"{r['dataset']}/{r['model']}/{r['attack']}")
        if key in seen:
            continue
        seen.add(key)
        highlight = info.get("critical") or info.get("critical_layers") or info.get("layers") or ()
        if isinstance(highlight, str):
            highlight = [highlight]
        path = out / f"scan_{_slug(r['defense'])}_{_slug(r['dataset'])}_{_slug(r['attack'])}.png"
        try:
            paths.append(
                figs.skip_scan(
                    scan,
                    path,
                    title=title,
                    highlight=[str(h) for h in highlight] if isinstance(highlight, list) else [],
                )
            )
        except (KeyError, TypeError, ValueError):  # rows not in the {skip, gamma, ba, asr} shape
            continue
    return paths


def write_report(
    db: str | Path,
    out: str | Path,
    *,
    formats: Iterable[str] = ("md",),
    asr_fail: float = 0.2,
    ba_drop: float = 10.0,
    spec_hash: str | None = None,
    figures: bool = True,
    title: str = "Backdoor defenses",
) -> dict[str, Path]:
    """Write ``report.md`` / ``report.csv`` / ``report.tex`` (and the figures) into ``out``."""
    table = build_table(load_rows(db, spec_hash), asr_fail=asr_fail, ba_drop=ba_drop)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    figs = write_figures(table, out) if figures else []
    for i, p in enumerate(figs):
        written[f"figure{i}"] = p
    for fmt in formats:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown report format {fmt!r}; allowed: {', '.join(FORMATS)}")
        text = {
            "md": lambda: to_markdown(table, title=title, figures=figs),
            "csv": lambda: to_csv(table),
            "latex": lambda: to_latex(table),
        }[fmt]()
        path = out / f"report.{SUFFIX[fmt]}"
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        written[fmt] = path
    return written


def render(
    db: str | Path,
    fmt: str = "md",
    *,
    asr_fail: float = 0.2,
    ba_drop: float = 10.0,
    spec_hash: str | None = None,
) -> str:
    """One format as text (no figures)."""
    table = build_table(load_rows(db, spec_hash), asr_fail=asr_fail, ba_drop=ba_drop)
    if fmt == "md":
        return to_markdown(table)
    if fmt == "csv":
        return to_csv(table)
    if fmt == "latex":
        return to_latex(table)
    raise ConfigError(f"unknown report format {fmt!r}; allowed: {', '.join(FORMATS)}")
