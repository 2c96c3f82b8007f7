"""Reports in the papers' layout: ``backdoorkit report results.db [--format md|csv|latex] [--out DIR]``.

The report is a pivot (pandas) of the long metrics table of the database
(:meth:`~backdoorkit.experiment.store.ResultStore.rows`): one row per cell x metric, aggregated per
defense x column group into mean and sample standard deviation over the seeds.

The main table has one row per defense (``none`` first, then a "clean model" reference row with the
clean BA) and one column group per dataset x attack (x model, x clean fraction when the database holds
several), each with the sub-columns BA and ASR in percent; with several seeds a cell shows
``mean ± std``.  Marks:

* a defense *fails* in a column (``†``) when its ASR exceeds ``asr_fail`` (default 20 %) or its BA is
  more than ``ba_drop`` points (default 10) below the no-defense BA of the same column;
* the best defense per column is in bold (highest BA, lowest ASR; the ``none`` and clean rows and
  inspectors do not compete).

Detectors appear with the BA / ASR of the model behind them at their own threshold.  Every other
metric a cell recorded (AUROC and TPR of detectors, isolation precision / recall, a new defense's own
score ...) appears, with no code per metric, in a table per defense kind (detector, training, repair,
inspector) of the metrics present for that kind's rows (fractions of :data:`PERCENT` in %, others as
recorded); an inspector's verdict counts as the metrics ``infected`` and ``target_correct``.  The
CSV has every metric (the quantised ASR, recorded for every row, only there).  Skipped combinations
are listed with their reasons and failed cells with their error line.  Figures
(:mod:`backdoorkit.viz.report_figures`): BA / ASR bars per column group and, when a defense recorded
a skip scan (``info["scan"]``), its skip-scan curves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from backdoorkit.errors import ConfigError
from backdoorkit.experiment.store import WELL_KNOWN_METRICS, ResultStore

NO_DEFENSE = "none"
CLEAN_ROW = "(clean model)"
FAIL_MARK = "†"
FORMATS = ("md", "csv", "latex")
SUFFIX = {"md": "md", "csv": "csv", "latex": "tex"}
MAIN = ("ba", "asr")
"""Metrics of the main table; ``clean_ba`` makes its clean-model row."""
CSV_ONLY = {"asr_quantized"}
"""Metrics recorded for every row, given in the CSV but not in the tables per defense kind."""
PERCENT = {*WELL_KNOWN_METRICS, "infected", "target_correct"}
"""Fractions shown in percent; any other metric is shown as it was recorded."""
LABELS = {
    "asr_quantized": "ASR (int8)",
    "auroc": "AUROC",
    "tpr_at_1fpr": "TPR@1%",
    "tpr_at_5fpr": "TPR@5%",
    "iso_precision": "isolation precision",
    "iso_recall": "isolation recall",
    "target_correct": "target right",
}
ORDER = ["auroc", "tpr_at_1fpr", "tpr_at_5fpr", "iso_precision", "iso_recall", "infected", "target_correct"]
"""Well-known metrics first in the tables per kind, then the others by name."""
KINDS = {
    "detector": "Detection (clean vs triggered test images)",
    "training": "Isolation (training-time defenses: isolated rows vs poisoned rows)",
    "repair": "Repair",
    "inspector": "Inspection (% of models called infected; % naming the right target)",
}
GROUP_COLUMNS = ["dataset", "model", "attack", "clean_fraction"]
KEY = ["dataset", "model", "attack", "defense", "seed", "clean_fraction"]


@dataclass
class Group:
    """One column group of the main table (a dataset x attack, x model / clean fraction if several)."""

    title: str
    dataset: str
    model: str
    attack: str
    clean_fraction: float | None


@dataclass
class ReportTable:
    """Everything a report shows, computed once from the database rows.

    ``stats``: mean / std / n per (defense, group title, metric name); ``cells``: per (defense, group
    title) the kind, failed and pending cell counts and the marks (``fail_asr``, ``fail_ba``,
    ``best_ba``, ``best_asr``).
    """

    groups: list[Group]
    defenses: list[str]
    stats: pd.DataFrame
    cells: pd.DataFrame
    skipped: list[tuple[str, str]]
    failed: list[tuple[str, str]]
    pending: int
    seeds: int
    superseded: int
    asr_fail: float
    ba_drop: float
    rows: list[dict[str, Any]]

    def stat(self, defense: str, group: Group, name: str) -> tuple[float | None, float | None, int]:
        """``(mean, std, n)`` of one metric (``None`` where there is no value / one seed)."""
        key = (defense, group.title, name)
        if key not in self.stats.index:
            return None, None, 0
        mean, std, n = self.stats.loc[key, ["mean", "std", "n"]]
        return float(mean), None if pd.isna(std) else float(std), int(n)

    def cell(self, defense: str, group: Group) -> dict[str, Any] | None:
        key = (defense, group.title)
        return self.cells.loc[key].to_dict() if key in self.cells.index else None

    @property
    def table_rows(self) -> list[str]:
        """Row labels of the main table: defenses, with the clean reference after ``none``."""
        out = list(self.defenses)
        if (self.stats.index.get_level_values(0) == CLEAN_ROW).any():
            out.insert(1 if out and out[0] == NO_DEFENSE else 0, CLEAN_ROW)
        return out

    def kind_rows(self, kind: str) -> list[str]:
        kinds = self.cells["kind"]
        return [d for d in self.defenses if (kinds.loc[[d]] == kind).any()] if len(kinds) else []

    def kind_metrics(self, kind: str) -> list[str]:
        """Every metric other than BA / ASR recorded for rows of ``kind`` (well-known ones first)."""
        rows = self.kind_rows(kind)
        s = self.stats[self.stats.index.get_level_values(0).isin(rows)]
        names = set(s.index.get_level_values(2)) - {*MAIN, "clean_ba", *CSV_ONLY}
        return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


# ---------------------------------------------------------------------------------------- building
def load_rows(db: str | Path, spec_hash: str | None = None) -> list[dict[str, Any]]:
    """The rows of a results database (optionally of one spec hash prefix); a file that is not a
    results database is a one-line :class:`ConfigError` and is never written to."""
    store = ResultStore(db, create=False)
    try:
        return store.rows(spec_hash=spec_hash)
    finally:
        store.close()


def _coords(r: dict[str, Any]) -> str:
    s = f"{r['dataset']} / {r['model']} / {r['attack']} / {r['defense']} (seed {r['seed']}"
    if r.get("scenario"):
        s += f", {r['scenario']}"
    return s + ")"


def _when(r: dict[str, Any]) -> float:
    return r.get("finished_at") or r.get("started_at") or r.get("created_at") or 0.0


def latest_per_coordinates(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One row per coordinates (dataset, model, attack, defense, seed, clean fraction): the latest.

    Several rows share coordinates when specs that differ in something the labels do not show (a
    training budget, say) wrote to the same database; only the most recent one is reported (pass a
    spec hash to choose).  Returns the rows kept and how many were dropped.
    """
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        key = tuple(r.get(k) for k in KEY)
        if key not in best or _when(r) >= _when(best[key]):
            best[key] = r
    chosen = {id(b) for b in best.values()}
    kept = [r for r in rows if id(r) in chosen]
    return kept, len(rows) - len(kept)


def _metrics_of(r: dict[str, Any]) -> dict[str, float]:
    """A row's metrics, with an inspector's verdict as ``infected`` / ``target_correct`` (0 or 1)."""
    out = dict(r.get("metrics") or {k: r[k] for k in WELL_KNOWN_METRICS if r.get(k) is not None})
    info = r.get("info") if isinstance(r.get("info"), dict) else {}
    verdict = info.get("verdict") if isinstance(info.get("verdict"), dict) else {}
    if verdict.get("infected") is not None:
        out["infected"] = float(bool(verdict["infected"]))
    if info.get("target_correct") is not None:
        out["target_correct"] = float(bool(info["target_correct"]))
    return out


def build_table(rows: list[dict[str, Any]], *, asr_fail: float = 0.2, ba_drop: float = 10.0) -> ReportTable:
    """Aggregate database rows into the report table (``asr_fail`` a fraction, ``ba_drop`` in points)."""
    if not 0 <= asr_fail <= 1:
        raise ConfigError(f"--asr-fail {asr_fail}: a fraction in [0, 1] (0.2 = 20 %)")
    if ba_drop < 0:
        raise ConfigError(f"--ba-drop {ba_drop}: points of accuracy, >= 0")
    rows, superseded = latest_per_coordinates(rows)
    several_models = len({r["model"] for r in rows}) > 1
    several_fractions = len({r.get("clean_fraction") for r in rows}) > 1
    # a skip whose coordinates have a result (recorded before a method was registered) is stale
    ran = {tuple(r[k] for k in KEY[:5]) for r in rows if r["status"] != "skipped"}
    skipped: dict[tuple[str, str], set[int]] = {}
    for r in rows:
        if r["status"] == "skipped" and tuple(r[k] for k in KEY[:5]) not in ran:
            what = f"{r['dataset']} / {r['attack']} / {r['defense']}" + (
                f" / {r['model']}" if several_models else ""
            )
            skipped.setdefault((what, r.get("skip_reason") or ""), set()).add(r["seed"])

    groups: dict[str, Group] = {}
    records, metrics = [], []
    for r in rows:
        if r["status"] == "skipped":
            continue
        parts = [r["dataset"], *([r["model"]] if several_models else []), r["attack"]]
        if several_fractions:
            parts.append(f"clean {100 * float(r.get('clean_fraction') or 0):g}%")
        title = " / ".join(parts)
        groups.setdefault(title, Group(title, *(r.get(k) for k in GROUP_COLUMNS)))
        kind = r.get("defense_kind") or "none"
        records.append({"defense": r["defense"], "group": title, "kind": kind, "status": r["status"]})
        if r["status"] == "done":
            metrics += [
                {"defense": r["defense"], "group": title, "seed": int(r["seed"]), "name": k, "value": v}
                for k, v in _metrics_of(r).items()
            ]
    long = pd.DataFrame(metrics, columns=["defense", "group", "seed", "name", "value"])
    # the clean reference: one value per seed (every defense row of a seed carries the same clean BA)
    clean = long[long["name"] == "clean_ba"].drop_duplicates(["group", "seed"])
    long = pd.concat([long, clean.assign(defense=CLEAN_ROW, name="ba")], ignore_index=True)
    stats = long.groupby(["defense", "group", "name"], sort=False)["value"].agg(
        mean="mean", std="std", n="count"
    )
    status = pd.DataFrame(records, columns=["defense", "group", "kind", "status"])
    cells = status.groupby(["defense", "group"], sort=False).agg(
        kind=("kind", "first"),
        failed_cells=("status", lambda s: int((s == "failed").sum())),
        pending_cells=("status", lambda s: int(s.isin(["pending", "running"]).sum())),
    )
    defenses = list(dict.fromkeys(status["defense"]))
    if NO_DEFENSE in defenses:
        defenses.remove(NO_DEFENSE)
        defenses.insert(0, NO_DEFENSE)
    return ReportTable(
        groups=list(groups.values()),
        defenses=defenses,
        stats=stats,
        cells=_marks(cells, stats, asr_fail, ba_drop),
        skipped=[
            (what, reason + (f" (seeds {', '.join(map(str, sorted(s)))})" if len(s) > 1 else ""))
            for (what, reason), s in skipped.items()
        ],
        failed=[(_coords(r), r.get("error") or "?") for r in rows if r["status"] == "failed"],
        pending=int(status["status"].isin(["pending", "running"]).sum()),
        seeds=int(long["seed"].nunique()),
        superseded=superseded,
        asr_fail=asr_fail,
        ba_drop=ba_drop,
        rows=rows,
    )


def _marks(cells: pd.DataFrame, stats: pd.DataFrame, asr_fail: float, ba_drop: float) -> pd.DataFrame:
    """Failure marks and best-per-column flags of every (defense, group)."""
    flags = ("fail_asr", "fail_ba", "best_ba", "best_asr")
    if cells.empty or stats.empty:
        return cells.assign(**dict.fromkeys(flags, False))
    means = stats["mean"].unstack("name").reindex(columns=list(MAIN))
    out = cells.join(means)
    base = means.xs(NO_DEFENSE, level="defense")["ba"] if NO_DEFENSE in means.index else pd.Series()
    base_ba = out.index.get_level_values("group").map(base).to_numpy(dtype=float)
    competes = (out.index.get_level_values("defense") != NO_DEFENSE) & (out["kind"] != "inspector")
    out["fail_asr"] = competes & (out["asr"] > asr_fail)
    out["fail_ba"] = competes & (100 * (base_ba - out["ba"]) > ba_drop)
    rivals = out[competes].groupby(level="group")
    groups = out.index.get_level_values("group")
    several = groups.map(rivals.size()).fillna(0).to_numpy() >= 2
    for col, best, flag in (("ba", "max", "best_ba"), ("asr", "min", "best_asr")):
        top = groups.map(rivals[col].agg(best)).to_numpy(dtype=float)
        out[flag] = competes & several & ((100 * out[col]).round(1).to_numpy() == (100 * top).round(1))
    return out.drop(columns=list(MAIN))


# ---------------------------------------------------------------------------------------- cell text
def _value_text(name: str, mean: float | None, std: float | None, pm: str = "±") -> str:
    if mean is None:
        return "–"
    scale, fmt = (100.0, ".1f") if name in PERCENT else (1.0, ".3g")
    text = f"{scale * mean:{fmt}}"
    return text + (f" {pm} {scale * std:{fmt}}" if std is not None else "")


def _cell(table: ReportTable, d: str, g: Group, which: str, style: str) -> str:
    """Text of one BA or ASR cell of the main table in ``md``, ``latex`` or ``plain`` style."""
    if d == CLEAN_ROW and which == "asr":
        return "–"
    c = table.cell(d, g) or {}
    mean, std, _ = table.stat(d, g, which)
    if mean is None:
        return "failed" if c.get("failed_cells") else "pending" if c.get("pending_cells") else "–"
    text = _value_text(which, mean, std, "$\\pm$" if style == "latex" else "±")
    if c.get(f"best_{which}") and style != "plain":
        text = f"**{text}**" if style == "md" else f"\\textbf{{{text}}}"
    if c.get(f"fail_{which}"):
        text += "$^\\dagger$" if style == "latex" else FAIL_MARK
    return text


def main_frame(table: ReportTable, style: str = "plain") -> pd.DataFrame:
    """The main table as text: rows = defenses (and the clean row), columns = (group title, BA | ASR)."""
    columns = pd.MultiIndex.from_tuples(
        [(g.title, m.upper()) for g in table.groups for m in MAIN], names=["group", "metric"]
    )
    body = [[_cell(table, d, g, m, style) for g in table.groups for m in MAIN] for d in table.table_rows]
    return pd.DataFrame(body, index=pd.Index(table.table_rows, name="Defense"), columns=columns)


def _legend(table: ReportTable) -> str:
    parts = [
        f"BA and ASR in %{'; mean ± std over ' + str(table.seeds) + ' seeds' if table.seeds > 1 else ''}.",
        f"{FAIL_MARK} defense failure: ASR > {100 * table.asr_fail:g}% or BA more than "
        f"{table.ba_drop:g} points below no defense.",
        "Bold: best defense per column (highest BA, lowest ASR).",
    ]
    if table.kind_rows("detector"):
        parts.append(
            "Detectors: BA/ASR of the model behind the detector at its own threshold "
            "(flagged inputs rejected)."
        )
    return " ".join(parts)


def _extra_tables(table: ReportTable) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, body)`` per defense kind of the metrics beyond BA / ASR (plain text cells)."""
    kinds = list(KINDS) + sorted(set(table.cells["kind"]) - set(KINDS) - {"none", "clean"})
    out = []
    for kind in kinds:
        names = table.kind_metrics(kind)
        if not names:
            continue
        header = [kind.capitalize() if kind in ("detector", "inspector") else "Defense"] + [
            f"{g.title} {LABELS.get(n, n)}" for g in table.groups for n in names
        ]
        body = [
            [d] + [_value_text(n, *table.stat(d, g, n)[:2]) for g in table.groups for n in names]
            for d in table.kind_rows(kind)
        ]
        out.append((KINDS.get(kind, f"{kind.capitalize()} defenses"), header, body))
    return out


# ---------------------------------------------------------------------------------------- markdown
def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = [header, ["---"] + ["---:"] * (len(header) - 1), *body]
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines)


def to_markdown(table: ReportTable, *, title: str = "Backdoor defenses", figures: Iterable[Path] = ()) -> str:
    """The whole report as Markdown."""
    out = [f"# {title}", ""]
    if not table.groups:
        out.append("No finished cells yet.")
    else:
        frame = main_frame(table, "md")
        header = ["Defense"] + [f"{g} {m}" for g, m in frame.columns]
        out += [_md_table(header, frame.reset_index().values.tolist())]
        out += ["", _legend(table), ""]
    for extra, header, body in _extra_tables(table):
        out += [f"## {extra}", "", _md_table(header, body), ""]
    if table.skipped:
        out += ["## Skipped combinations", "", *[f"- {what}: {why}" for what, why in table.skipped], ""]
    if table.failed:
        out += ["## Failed cells", "", *[f"- {what}: `{err}`" for what, err in table.failed], ""]
    if table.pending:
        out += [f"{table.pending} cells not finished yet (pending or running).", ""]
    if table.superseded:
        out += [
            f"{table.superseded} older results with the same coordinates are not shown "
            "(report one spec with --spec HASH).",
            "",
        ]
    figs = list(figures)
    if figs:
        out += ["## Figures", "", *[f"![{p.stem}]({p.name})" for p in figs], ""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------- csv
PCT_FIELDS = ("ba_pct", "ba_pct_std", "asr_pct", "asr_pct_std", "clean_ba_pct")
CSV_FIELDS = (
    *("dataset", "model", "attack", "clean_fraction", "defense", "kind", "seeds", *PCT_FIELDS),
    *("fail_asr", "fail_ba", "best_ba", "best_asr", "failed_cells", "pending_cells"),
)


def to_csv(table: ReportTable) -> str:
    """One line per defense x column group (tidy): BA / ASR / clean BA in percent, the marks, the cell
    counts, then every other metric (as recorded, mean over seeds, and its ``_std``)."""
    others = sorted(set(table.stats.index.get_level_values(2)) - {*MAIN, "clean_ba"})
    lines = []
    for g in table.groups:
        for d in table.defenses:
            c = table.cell(d, g)
            if c is None:
                continue
            (ba, ba_std, n), (asr, asr_std, _) = table.stat(d, g, "ba"), table.stat(d, g, "asr")
            line = {
                "dataset": g.dataset,
                "model": g.model,
                "attack": g.attack,
                "clean_fraction": g.clean_fraction,
                "defense": d,
                "kind": c["kind"],
                "seeds": n,
                "ba_pct": ba,
                "ba_pct_std": ba_std,
                "asr_pct": asr,
                "asr_pct_std": asr_std,
                "clean_ba_pct": table.stat(CLEAN_ROW, g, "ba")[0],
            }
            line = {k: round(100 * v, 2) if k in PCT_FIELDS and v is not None else v for k, v in line.items()}
            line |= {k: int(c[k]) for k in ("fail_asr", "fail_ba", "best_ba", "best_asr")}
            line |= {k: int(c[k]) for k in ("failed_cells", "pending_cells")}
            for name in others:
                mean, std, _ = table.stat(d, g, name)
                line |= {name: mean, f"{name}_std": std}
            lines.append(line)
    columns = [*CSV_FIELDS, *(f"{n}{s}" for n in others for s in ("", "_std"))]
    return pd.DataFrame(lines, columns=columns).to_csv(index=False, lineterminator="\n", float_format="%.6g")


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
    frame = main_frame(table, "latex").replace("–", "--")
    lines = []
    if caption:
        lines += ["\\begin{table}[t]", "\\centering", f"\\caption{{{latex_escape(caption)}}}"]
    lines += ["\\begin{tabular}{l" + " rr" * n + "}", "\\toprule"]
    titles = [f"\\multicolumn{{2}}{{c}}{{{latex_escape(g.title)}}}" for g in table.groups]
    lines.append(" & ".join(["", *titles]) + " \\\\")
    if n:
        lines.append(" ".join(f"\\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(n)))
    lines += [" & ".join(["Defense"] + ["BA", "ASR"] * n) + " \\\\", "\\midrule"]
    lines += [" & ".join([latex_escape(d), *row]) + " \\\\" for d, *row in frame.reset_index().values]
    lines += ["\\bottomrule", "\\end{tabular}", *(["\\end{table}"] if caption else [])]
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
            c = table.cell(d, g) or {}
            for which in MAIN:
                style = ("bold " if c.get(f"best_{which}") else "") + (
                    "red" if c.get(f"fail_{which}") else ""
                )
                cells.append(Text(_cell(table, d, g, which, "plain"), style=style.strip()))
        t.add_row(*cells)
    return t


def print_summary(table: ReportTable, console: Any = None) -> None:
    """The table, the metric tables per kind, skips and failures on the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if table.groups:
        console.print(to_rich(table))
        console.print(_legend(table), style="dim", soft_wrap=True)
    else:
        console.print("no finished cells")
    for title, header, body in _extra_tables(table):
        t = Table(*header, title=title, title_justify="left")
        for row in body:
            t.add_row(*row)
        console.print(t)
    for what, items, style in (("skipped", table.skipped, "yellow"), ("failed", table.failed, "red")):
        if items:
            console.print(f"{what} ({len(items)}):", style=style)
            for where, why in items:
                console.print(f"  {where}: {why}", markup=False, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------- files
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")[:80] or "x"


def write_figures(table: ReportTable, out: Path) -> list[Path]:
    """BA/ASR bars per column group and skip-scan curves where defenses recorded a scan."""
    from backdoorkit.viz import report_figures as figs

    paths: list[Path] = []
    for g in table.groups:
        bars = {}
        for d in table.defenses:
            (ba, ba_std, _), (asr, asr_std, _) = table.stat(d, g, "ba"), table.stat(d, g, "asr")
            if ba is not None and (table.cell(d, g) or {}).get("kind") != "inspector":
                bars[d] = (ba, ba_std, asr, asr_std)
        if bars:
            f = 100 * pd.DataFrame(bars, index=["ba", "ba_std", "asr", "asr_std"], dtype=float).T
            f[["ba_std", "asr_std"]] = f[["ba_std", "asr_std"]].fillna(0.0)
            path = out / f"bars_{_slug(g.title)}.png"
            paths.append(
                figs.ba_asr_bars(
                    list(f.index),
                    *(f[c].tolist() for c in f),
                    path,
                    title=g.title,
                    asr_fail=100 * table.asr_fail,
                )
            )
    seen: set[tuple[str, str]] = set()
    for r in table.rows:
        info = r.get("info") if isinstance(r.get("info"), dict) else {}
        scan = info.get("scan") if r["status"] == "done" else None
        key = (r["defense"], f"{r['dataset']}/{r['model']}/{r['attack']}")
        if not isinstance(scan, list) or not scan or key in seen:
            continue
        seen.add(key)
        # the scan is the defense's own (on its clean data, e.g. with a surrogate trigger)
        where = f"{r['dataset']} / {r['attack']} (seed {r['seed']})"
        highlight = info.get("critical") or info.get("critical_layers") or info.get("layers") or ()
        highlight = [highlight] if isinstance(highlight, str) else highlight
        path = out / f"scan_{_slug(r['defense'])}_{_slug(r['dataset'])}_{_slug(r['attack'])}.png"
        try:
            paths.append(
                figs.skip_scan(
                    scan,
                    path,
                    title=f"{r['defense']} skip scan on the defender's data: {where}",
                    highlight=[str(h) for h in highlight] if isinstance(highlight, list) else [],
                )
            )
        except (KeyError, TypeError, ValueError):  # rows not in the {skip, gamma, ba, asr} shape
            continue
    return paths


def _text(
    table: ReportTable, fmt: str, *, title: str = "Backdoor defenses", figures: Iterable[Path] = ()
) -> str:
    if fmt == "md":
        return to_markdown(table, title=title, figures=figures)
    if fmt == "csv":
        return to_csv(table)
    if fmt == "latex":
        return to_latex(table)
    raise ConfigError(f"unknown report format {fmt!r}; allowed: {', '.join(FORMATS)}")


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
    formats = list(formats)
    for fmt in formats:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown report format {fmt!r}; allowed: {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    figs = write_figures(table, out) if figures else []
    written: dict[str, Path] = {f"figure{i}": p for i, p in enumerate(figs)}
    for fmt in formats:
        path = out / f"report.{SUFFIX[fmt]}"
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(_text(table, fmt, title=title, figures=figs))
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
    return _text(build_table(load_rows(db, spec_hash), asr_fail=asr_fail, ba_drop=ba_drop), fmt)
