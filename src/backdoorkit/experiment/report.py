"""Reports in the papers' layout: ``backdoorkit report results.db [--format md|csv|latex|html] [--out DIR]``.

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
  inspectors do not compete), only once no defense of that column is still pending or running.

Detectors appear with the BA / ASR of the model behind them at their own threshold.  Every other
metric a cell recorded (AUROC and TPR of detectors, isolation precision / recall, a new defense's own
score ...) appears, with no code per metric, in a table per defense kind (detector, training, repair,
inspector) of the metrics present for that kind's rows, one row per defense x column group and one
column per metric (fractions of :data:`PERCENT` in %, others as recorded); an inspector's verdict
counts as the metrics ``infected`` and ``target_correct``.  The CSV has every metric (the quantised
ASR, recorded for every row, only there).  Skipped combinations are listed with their reasons and
failed cells with their error line.  Figures (:mod:`backdoorkit.viz.report_figures`): BA / ASR bars
per column group; when a defense recorded a skip scan (``info["scan"]``), its skip-scan curves; and
for each parameter sweep among the cells (:mod:`backdoorkit.experiment.sweeps`), BA / ASR against the
swept value: an attack sweep with a pair of lines per defense, a defense sweep with a pair per attack.

Paper numbers (:func:`load_paper`): a ``<spec>.paper.yaml`` file (one source of truth per
reproduction, next to its spec)::

    source: "Yang et al., ICASSP 2023, Table 1 (CIFAR-10, ResNet-18)"
    rows:
      - {dataset: cifar10, attack: badnets, defense: none, ba: 92.02, asr: 96.96}
      - {dataset: cifar10, attack: badnets, defense: ssft, ba: 89.1, asr: 0.3, model: resnet18}

BA / ASR (and any other metric of :data:`PERCENT`) in percent, other metrics as the report records
them; ``dataset`` / ``attack`` / ``defense`` (and the optional ``model``) are the report's labels (an
attack or defense given by its registered name matches when no label equals it; ``defense: clean`` is
the clean-model row).  Every format then shows the paper's value beside ours in each column group
(``BA (paper)``, ``ASR (paper)``; in the tables per kind ``<metric> (paper)``) and names the source;
paper rows that match nothing are listed.  The file is taken from ``--paper``, else found through the
database's runs (:func:`find_paper`: the spec's ``paper:`` key, else ``<spec>.paper.yaml`` next to the
spec file, else ``<spec name>.paper.yaml`` next to the database).  The HTML format
(:mod:`backdoorkit.experiment.html`) is one self-contained file with the tables, the figures and the
trigger gallery embedded.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backdoorkit.errors import ConfigError, validation_message
from backdoorkit.experiment.store import WELL_KNOWN_METRICS, ResultStore

NO_DEFENSE = "none"
CLEAN_ROW = "(clean model)"
FAIL_MARK = "†"
FORMATS = ("md", "csv", "latex", "html")
SUFFIX = {"md": "md", "csv": "csv", "latex": "tex", "html": "html"}
PAPER_SUFFIX = ".paper.yaml"
CLEAN_ALIASES = {"clean", "clean model", CLEAN_ROW}
"""Names of the clean-model row in a paper-numbers file."""
MAIN = ("ba", "asr")
"""Metrics of the main table; ``clean_ba`` makes its clean-model row."""
WIDE_GROUPS = 4
"""The most settings (column groups) the main table shows side by side before it is turned."""
CSV_ONLY = {"asr_quantized"}
"""Metrics recorded for every row, given in the CSV but not in the tables per defense kind."""
PERCENT = {
    *WELL_KNOWN_METRICS,
    "infected",
    "target_correct",
    "iso_base_precision",
    "iso_base_recall",
    "isolation_overlap",
    "base_fit_acc",
    "probe_fit_acc",
    "detected",
    "false_rejection",
    "model_ba",
    "model_asr",
    "nc_infected",
}
"""Fractions shown in percent; any other metric is shown as it was recorded."""
LABELS = {
    "asr_quantized": "ASR (int8)",
    "auroc": "AUROC",
    "tpr_at_1fpr": "TPR@1%",
    "tpr_at_5fpr": "TPR@5%",
    "detected": "detection rate",
    "false_rejection": "false rejection",
    "model_ba": "BA unguarded",
    "model_asr": "ASR unguarded",
    "iso_precision": "isolation precision",
    "iso_recall": "isolation recall",
    "iso_base_precision": "isolation precision by M_s",
    "iso_base_recall": "isolation recall by M_s",
    "isolation_overlap": "isolation overlap with M_s",
    "base_fit_acc": "M_s training accuracy",
    "probe_fit_acc": "M' training accuracy",
    "target_correct": "target right",
    "nc_infected": "NC infected",
    "nc_anomaly_index": "NC anomaly index",
}
ORDER = [
    "auroc",
    "tpr_at_1fpr",
    "tpr_at_5fpr",
    "detected",
    "false_rejection",
    "model_ba",
    "model_asr",
    "iso_precision",
    "iso_recall",
    "iso_base_precision",
    "iso_base_recall",
    "base_fit_acc",
    "probe_fit_acc",
    "infected",
    "target_correct",
]
"""Well-known metrics first in the tables per kind, then the others by name."""
KINDS = {
    "detector": "Detection (clean vs triggered test images)",
    "training": "Isolation (training-time defenses: isolated rows vs poisoned rows)",
    "repair": "Repair",
    "inspector": "Inspection (% of models called infected; % naming the right target)",
}
GROUP_COLUMNS = ["dataset", "model", "attack", "clean_fraction", "attack_name"]
KEY = ["dataset", "model", "attack", "defense", "seed", "clean_fraction"]


@dataclass
class Group:
    """One column group of the main table (a dataset x attack, x model / clean fraction if several)."""

    title: str
    dataset: str
    model: str
    attack: str
    clean_fraction: float | None
    attack_name: str | None = None


# ---------------------------------------------------------------------------------------- paper numbers
class PaperRow(BaseModel):
    """One row of a paper-numbers file: coordinates (report labels) and metrics (BA / ASR in %)."""

    model_config = ConfigDict(extra="allow")

    dataset: str
    attack: str
    defense: str
    model: str | None = None
    ba: float | None = None
    asr: float | None = None

    @field_validator("dataset", "attack", "defense", "model", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    def metrics(self) -> dict[str, float]:
        """Every metric of the row as the report stores it (fractions for :data:`PERCENT` names)."""
        out = {k: v for k, v in (("ba", self.ba), ("asr", self.asr)) if v is not None}
        for k, v in (self.model_extra or {}).items():
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"metric {k!r} = {v!r} is not a finite number")
            out[k] = float(v)
        return {k: v / 100.0 if k in PERCENT else v for k, v in out.items()}

    def where(self) -> str:
        return f"{self.dataset} / {self.attack} / {self.defense}" + (f" / {self.model}" if self.model else "")


class PaperNumbers(BaseModel):
    """A paper-numbers file: where the numbers come from and their rows."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1)
    rows: list[PaperRow] = Field(min_length=1)
    path: str | None = Field(None, description="the file it was read from (set by load_paper)")


def load_paper(path: str | Path) -> PaperNumbers:
    """Read a paper-numbers YAML file (format in the module docstring); errors are one line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such paper-numbers file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise ConfigError(f"{path.name}: not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: expected a mapping with 'source' and 'rows'")
    data.pop("path", None)
    try:
        paper = PaperNumbers(**data, path=str(path))
        for row in paper.rows:
            row.metrics()
    except ValidationError as exc:
        raise ConfigError(f"{path.name}: {validation_message(exc)}") from None
    except ValueError as exc:
        raise ConfigError(f"{path.name}: {exc}") from None
    return paper


def _spec_paths(argv: list[str]) -> list[Path]:
    """Spec files named on a recorded command line (``run SPEC ...``)."""
    return [
        Path(a).expanduser() for a in argv if a.endswith((".yaml", ".yml")) and not a.endswith(PAPER_SUFFIX)
    ]


def _paper_next_to(spec: Path) -> Path | None:
    """The paper file a spec file names (``paper:``) or that sits next to it as ``<stem>.paper.yaml``."""
    if not spec.is_file():
        return None
    try:
        data = yaml.safe_load(spec.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and isinstance(data.get("paper"), str):
        named = Path(data["paper"]).expanduser()
        return named if named.is_absolute() else spec.parent / named
    beside = spec.with_name(spec.stem + PAPER_SUFFIX)
    return beside if beside.is_file() else None


def find_paper(db: str | Path, spec_hash: str | None = None) -> Path | None:
    """The paper-numbers file of a database's spec, when one can be found (else ``None``).

    Looks through the recorded runs (newest first, optionally of one spec hash prefix): a spec file
    named on the run's command line, resolved against the current folder and the database's folder,
    gives its ``paper:`` entry or its ``<stem>.paper.yaml``; else ``<spec name>.paper.yaml`` next to
    the database.  A missing or unreadable runs table gives ``None``.
    """
    db = Path(db).expanduser()
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            runs = con.execute(
                "SELECT spec_name, argv, spec_hash FROM runs ORDER BY started_at DESC"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    for name, argv, hash_ in runs:
        if spec_hash and not str(hash_ or "").startswith(spec_hash):
            continue
        try:
            args = [str(a) for a in json.loads(argv or "[]")]
        except (json.JSONDecodeError, TypeError):
            args = []
        for spec in _spec_paths(args):
            for candidate in [spec] if spec.is_absolute() else [Path.cwd() / spec, db.parent / spec]:
                found = _paper_next_to(candidate)
                if found is not None and found.is_file():
                    return found
        if name:
            beside = db.parent / f"{name}{PAPER_SUFFIX}"
            if beside.is_file():
                return beside
    return None


def _match(value: str, labels: set[str], names: dict[str, str]) -> set[str]:
    """Labels a paper coordinate names: the label itself, else every label of that registered name."""
    if value in labels:
        return {value}
    return {label for label, name in names.items() if name == value}


def attach_paper(table: ReportTable, paper: PaperNumbers | None) -> ReportTable:
    """Put a paper's numbers into ``table.paper`` (fractions, keyed like ``stats``); returns the table."""
    table.paper, table.paper_unmatched, table.paper_source = {}, [], None
    if paper is None:
        return table
    table.paper_source = paper.source
    defense_names = {
        r["defense"]: str(r.get("defense_name") or r["defense"])
        for r in table.rows
        if r["status"] != "skipped"
    }
    defense_labels = set(table.defenses)
    attack_labels = {g.attack for g in table.groups}
    attack_names = {g.attack: g.attack_name or g.attack for g in table.groups}
    for row in paper.rows:
        if row.defense in CLEAN_ALIASES:
            defenses = {CLEAN_ROW}
        else:
            defenses = _match(row.defense, defense_labels, defense_names)
        attacks = _match(row.attack, attack_labels, attack_names)
        groups = [
            g
            for g in table.groups
            if g.dataset == row.dataset
            and g.attack in attacks
            and (row.model is None or g.model == row.model)
        ]
        if not defenses or not groups:
            why = "no such defense in these results" if not defenses else "no such column group"
            table.paper_unmatched.append((row.where(), why))
            continue
        for d in defenses:
            for g in groups:
                for name, value in row.metrics().items():
                    if d == CLEAN_ROW and name != "ba":
                        continue
                    table.paper[(d, g.title, name)] = value
    return table


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
    paper: dict[tuple[str, str, str], float] = field(default_factory=dict)
    """The paper's values (fractions for :data:`PERCENT` names) per (defense, group title, metric)."""
    paper_unmatched: list[tuple[str, str]] = field(default_factory=list)
    paper_source: str | None = None

    def paper_value(self, defense: str, group: Group, name: str) -> float | None:
        return self.paper.get((defense, group.title, name))

    def has_paper(self, group: Group, name: str) -> bool:
        """Whether the paper gives ``name`` for any row of ``group`` (its column is then shown)."""
        return any(g == group.title and n == name for _, g, n in self.paper)

    def subcolumns(self, group: Group) -> list[tuple[str, bool]]:
        """``(metric, from the paper)`` of a main-table column group: BA, [BA paper], ASR, [ASR paper]."""
        return [(m, p) for m in MAIN for p in (False, True) if not p or self.has_paper(group, m)]

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

    @property
    def by_setting(self) -> bool:
        """Whether the main table reads better turned: one row per setting (column group), one BA / ASR
        column pair per defense.  That is the case with more than :data:`WIDE_GROUPS` settings and more
        settings than defenses (a detection spec over a dozen attacks); Markdown, HTML and the terminal
        follow it, LaTeX and CSV keep their fixed layouts."""
        return len(self.groups) > max(WIDE_GROUPS, len(self.table_rows))

    def by_setting_subcolumns(self, defense: str) -> list[tuple[str, bool]]:
        """``(metric, from the paper)`` of one defense in the turned layout: the paper's column appears
        where the paper gives that metric of that defense for some setting; the clean-model row has no
        ASR column."""
        return [
            (m, p)
            for m in (("ba",) if defense == CLEAN_ROW else MAIN)
            for p in (False, True)
            if not p or any(self.paper_value(defense, g, m) is not None for g in self.groups)
        ]

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
    """A row's metrics, with an inspector's verdict as ``infected`` / ``target_correct`` (0 or 1).

    A defense of another kind that carries a verdict (NC unlearning) records its own metrics of it
    (``nc_infected``), so ``infected`` is derived for inspector rows only."""
    out = dict(r.get("metrics") or {k: r[k] for k in WELL_KNOWN_METRICS if r.get(k) is not None})
    info = r.get("info") if isinstance(r.get("info"), dict) else {}
    verdict = info.get("verdict") if isinstance(info.get("verdict"), dict) else {}
    if verdict.get("infected") is not None and r.get("defense_kind") in (None, "inspector"):
        out["infected"] = float(bool(verdict["infected"]))
    if info.get("target_correct") is not None:
        out["target_correct"] = float(bool(info["target_correct"]))
    return out


def build_table(
    rows: list[dict[str, Any]],
    *,
    asr_fail: float = 0.2,
    ba_drop: float = 10.0,
    paper: PaperNumbers | None = None,
) -> ReportTable:
    """Aggregate database rows into the report table (``asr_fail`` a fraction, ``ba_drop`` in points),
    with a paper's numbers beside ours when ``paper`` is given."""
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
    table = ReportTable(
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
    return attach_paper(table, paper)


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
    # a column's best is only named once every defense in it has finished: a partial column's leader
    # may be beaten by a cell still pending or running
    settled = groups.map((rivals["pending_cells"].sum() == 0).astype(int)).fillna(0).to_numpy() == 1
    several &= settled
    for col, best, flag in (("ba", "max", "best_ba"), ("asr", "min", "best_asr")):
        top = groups.map(rivals[col].agg(best)).to_numpy(dtype=float)
        out[flag] = competes & several & ((100 * out[col]).round(1).to_numpy() == (100 * top).round(1))
    return out.drop(columns=list(MAIN))


# ---------------------------------------------------------------------------------------- cell text
def _value_text(name: str, mean: float | None, std: float | None, pm: str = "±") -> str:
    if mean is None:
        return "–"
    scale, fmt = (100.0, ".1f") if name in PERCENT else (1.0, ".3g")
    if name not in PERCENT and float(mean).is_integer() and abs(mean) < 1e9:
        fmt = ".0f"  # a count (rows isolated, steps): all its digits, not 1.9e+03
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


def paper_cell(table: ReportTable, d: str, g: Group, which: str) -> str:
    """Text of the paper's value of one cell (``–`` where the paper gives none)."""
    if d == CLEAN_ROW and which != "ba":
        return "–"
    return _value_text(which, table.paper_value(d, g, which), None)


def subcolumn_label(metric: str, from_paper: bool) -> str:
    label = metric.upper() if metric in MAIN else LABELS.get(metric, metric)
    return f"{label} (paper)" if from_paper else label


Slot = tuple[str, Group, str, bool]
"""One main-table cell: (defense, column group, metric, from the paper)."""


@dataclass
class MainLayout:
    """Where every cell of the main table goes: ``key`` names the row header (``Defense`` or
    ``Setting``), ``tops`` the column groups with their sub-columns, ``rows`` each row's name and slots."""

    key: str
    tops: list[tuple[str, list[tuple[str, bool]]]]
    rows: list[tuple[str, list[Slot]]]


def main_layout(table: ReportTable, turned: bool | None = None) -> MainLayout:
    """The main table's layout: rows = defenses (and the clean row) and column groups = settings, or,
    turned (default: :attr:`ReportTable.by_setting`), rows = settings and column groups = defenses."""
    if table.by_setting if turned is None else turned:
        tops = [(d, table.by_setting_subcolumns(d)) for d in table.table_rows]
        rows = [(g.title, [(d, g, m, p) for d, subs in tops for m, p in subs]) for g in table.groups]
        return MainLayout("Setting", tops, rows)
    tops = [(g.title, table.subcolumns(g)) for g in table.groups]
    rows = [
        (d, [(d, g, m, p) for g in table.groups for m, p in table.subcolumns(g)]) for d in table.table_rows
    ]
    return MainLayout("Defense", tops, rows)


def slot_text(table: ReportTable, slot: Slot, style: str = "plain") -> str:
    """Text of one main-table cell: the paper's value or ours (marked in ``style``)."""
    d, g, m, from_paper = slot
    return paper_cell(table, d, g, m) if from_paper else _cell(table, d, g, m, style)


def main_frame(table: ReportTable, style: str = "plain", turned: bool | None = False) -> pd.DataFrame:
    """The main table as text (see :func:`main_layout`; not turned unless asked): columns =
    (group title, BA | ASR), with ``BA (paper)`` / ``ASR (paper)`` beside ours where the paper gives them."""
    layout = main_layout(table, turned)
    columns = pd.MultiIndex.from_tuples(
        [(top, subcolumn_label(m, p)) for top, subs in layout.tops for m, p in subs],
        names=["group", "metric"],
    )
    body = [[slot_text(table, s, style) for s in slots] for _, slots in layout.rows]
    index = pd.Index([name for name, _ in layout.rows], name=layout.key)
    return pd.DataFrame(body, index=index, columns=columns)


def _legend(table: ReportTable) -> str:
    parts = [
        f"BA and ASR in %{'; mean ± std over ' + str(table.seeds) + ' seeds' if table.seeds > 1 else ''}.",
        f"{FAIL_MARK} defense failure: ASR > {100 * table.asr_fail:g}% or BA more than "
        f"{table.ba_drop:g} points below no defense.",
        f"Bold: best defense per {'setting' if table.by_setting else 'column'} (highest BA, lowest ASR), "
        f"in {'settings' if table.by_setting else 'columns'} where every defense finished.",
    ]
    if table.kind_rows("detector"):
        parts.append(
            "Detectors: BA/ASR of the model behind the detector at its own threshold "
            "(flagged inputs rejected)."
        )
    if table.paper_source:
        parts.append(f"(paper): {table.paper_source}.")
    return " ".join(parts)


def _extra_tables(table: ReportTable) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(title, header, body)`` per defense kind of the metrics beyond BA / ASR (plain text cells).

    Long layout: one row per defense and column group (``Setting``, e.g. ``cifar10 / BadNets``), one
    column per metric, the paper's value beside ours where it gives one.  A detection spec over a dozen
    attacks with ten metrics each stays a dozen columns wide instead of 120.  The first two columns name
    the row; rows where a defense has no value in that group (ours or the paper's) are left out.
    """

    def has(d: str, g: Group, n: str, paper: bool) -> bool:
        return table.paper_value(d, g, n) is not None if paper else table.stat(d, g, n)[2] > 0

    kinds = list(KINDS) + sorted(set(table.cells["kind"]) - set(KINDS) - {"none", "clean"})
    out = []
    for kind in kinds:
        rows = table.kind_rows(kind)
        given = {n for d, _, n in table.paper if d in rows} - {*MAIN, "clean_ba", *CSV_ONLY}
        names = table.kind_metrics(kind)
        names += sorted(given - set(names))
        if not names:
            continue

        # a column only where some row of this kind has a value there (ours or the paper's)
        cols = [
            (n, p)
            for n in names
            for p in (False, True)
            if any(has(d, g, n, p) for d in rows for g in table.groups)
        ]
        body = [
            [d, g.title]
            + [
                _value_text(n, table.paper_value(d, g, n), None)
                if p
                else _value_text(n, *table.stat(d, g, n)[:2])
                for n, p in cols
            ]
            for g in table.groups
            for d in rows
            if any(has(d, g, n, p) for n, p in cols)
        ]
        header = [kind.capitalize() if kind in ("detector", "inspector") else "Defense", "Setting"]
        header += [subcolumn_label(n, p) for n, p in cols]
        out.append((KINDS.get(kind, f"{kind.capitalize()} defenses"), header, body))
    return out


# ---------------------------------------------------------------------------------------- markdown
def _md_table(header: list[str], body: list[list[str]], keys: int = 1) -> str:
    """A Markdown table: the first ``keys`` columns (the row's name) left-aligned, the values right."""
    lines = [header, ["---"] * keys + ["---:"] * (len(header) - keys), *body]
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines)


def to_markdown(table: ReportTable, *, title: str = "Backdoor defenses", figures: Iterable[Path] = ()) -> str:
    """The whole report as Markdown."""
    out = [f"# {title}", ""]
    if not table.groups:
        out.append("No finished cells yet.")
    else:
        frame = main_frame(table, "md", turned=None)
        header = [frame.index.name] + [f"{g} {m}" for g, m in frame.columns]
        out += [_md_table(header, frame.reset_index().values.tolist())]
        out += ["", _legend(table), ""]
    for extra, header, body in _extra_tables(table):
        out += [f"## {extra}", "", _md_table(header, body, keys=2), ""]
    if table.paper_unmatched:
        out += [
            "## Paper rows without a result here",
            "",
            *[f"- {what}: {why}" for what, why in table.paper_unmatched],
            "",
        ]
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
    counts, then every other metric (as recorded, mean over seeds, and its ``_std``); with paper numbers
    ``paper_ba_pct`` / ``paper_asr_pct`` and ``paper_<metric>`` (as the report records it)."""
    others = sorted(set(table.stats.index.get_level_values(2)) - {*MAIN, "clean_ba"})
    paper_others = sorted({n for _, _, n in table.paper} - set(MAIN))
    paper_fields = [
        *(["paper_ba_pct", "paper_asr_pct"] if table.paper else []),
        *(f"paper_{n}" for n in paper_others),
    ]
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
            if table.paper:
                for name in MAIN:
                    value = table.paper_value(d, g, name)
                    line[f"paper_{name}_pct"] = None if value is None else round(100 * value, 2)
                line |= {f"paper_{n}": table.paper_value(d, g, n) for n in paper_others}
            lines.append(line)
    columns = [*CSV_FIELDS, *(f"{n}{s}" for n in others for s in ("", "_std")), *paper_fields]
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
    """The main table as a booktabs ``tabular`` (column groups with ``\\multicolumn``; the paper's
    values, when attached, in columns of their own beside ours)."""
    frame = main_frame(table, "latex").replace("–", "--")
    widths = [len(table.subcolumns(g)) for g in table.groups]
    lines = []
    if caption:
        lines += ["\\begin{table}[t]", "\\centering", f"\\caption{{{latex_escape(caption)}}}"]
    lines += ["\\begin{tabular}{l" + "".join(" " + "r" * w for w in widths) + "}", "\\toprule"]
    titles = [
        f"\\multicolumn{{{w}}}{{c}}{{{latex_escape(g.title)}}}"
        for g, w in zip(table.groups, widths, strict=True)
    ]
    lines.append(" & ".join(["", *titles]) + " \\\\")
    starts = [2 + sum(widths[:i]) for i in range(len(widths))]
    if widths:
        lines.append(
            " ".join(f"\\cmidrule(lr){{{a}-{a + w - 1}}}" for a, w in zip(starts, widths, strict=True))
        )
    subs = [latex_escape(subcolumn_label(m, p)) for g in table.groups for m, p in table.subcolumns(g)]
    lines += [" & ".join(["Defense", *subs]) + " \\\\", "\\midrule"]
    lines += [" & ".join([latex_escape(d), *row]) + " \\\\" for d, *row in frame.reset_index().values]
    lines += ["\\bottomrule", "\\end{tabular}", *(["\\end{table}"] if caption else [])]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- terminal
def to_rich(table: ReportTable, *, title: str = "BA / ASR (%)") -> Any:
    """The main table as a :class:`rich.table.Table` (bold best, red failures; turned as
    :attr:`ReportTable.by_setting` says)."""
    from rich.table import Table
    from rich.text import Text

    layout = main_layout(table)
    t = Table(title=title, title_justify="left")
    t.add_column(layout.key.lower(), style="bold", no_wrap=True)
    for top, subs in layout.tops:
        for i, (m, p) in enumerate(subs):
            head = subcolumn_label(m, p)
            t.add_column(f"{top if i == 0 else ''}\n{head}", justify="right", style="dim" if p else None)
    for name, slots in layout.rows:
        cells = [Text(slot_text(table, s), style="" if s[3] else _rich_style(table, *s[:3])) for s in slots]
        t.add_row(name, *cells)
    return t


def _rich_style(table: ReportTable, d: str, g: Group, which: str) -> str:
    c = table.cell(d, g) or {}
    return (("bold " if c.get(f"best_{which}") else "") + ("red" if c.get(f"fail_{which}") else "")).strip()


TERMINAL_COLUMN_WIDTH = 10
"""Characters a metric column needs on the terminal; a per-kind table with more columns than the
console fits is printed transposed (one row per attack and metric, one column per method)."""


def print_summary(table: ReportTable, console: Any = None) -> None:
    """The table, the metric tables per kind (transposed when too wide), skips and failures on the
    terminal."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if table.groups:
        console.print(to_rich(table))
        console.print(_legend(table), style="dim", soft_wrap=True)
    else:
        console.print("no finished cells")
    for title, header, body in _extra_tables(table):
        if len(header) * TERMINAL_COLUMN_WIDTH > console.width:  # too wide to read: one row per metric
            header, body = (
                [header[0]] + [f"{row[0]} ({row[1]})" for row in body],
                [[name] + [row[i] for row in body] for i, name in enumerate(header[2:], start=2)],
            )
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
    """BA/ASR bars per column group (the paper's values as markers) and skip-scan curves where
    defenses recorded a scan."""
    from backdoorkit.viz import report_figures as figs

    paths: list[Path] = []
    for g in table.groups:
        bars = {}
        for d in table.defenses:
            (ba, ba_std, _), (asr, asr_std, _) = table.stat(d, g, "ba"), table.stat(d, g, "asr")
            if ba is not None and (table.cell(d, g) or {}).get("kind") != "inspector":
                paper = [table.paper_value(d, g, m) for m in MAIN]
                bars[d] = (ba, ba_std, asr, asr_std, *(math.nan if v is None else v for v in paper))
        if bars:
            columns = ["ba", "ba_std", "asr", "asr_std", "paper_ba", "paper_asr"]
            f = 100 * pd.DataFrame(bars, index=columns, dtype=float).T
            f[["ba_std", "asr_std"]] = f[["ba_std", "asr_std"]].fillna(0.0)
            given = f[["paper_ba", "paper_asr"]].notna().to_numpy().any()
            path = out / f"bars_{_slug(g.title)}.png"
            paths.append(
                figs.ba_asr_bars(
                    list(f.index),
                    *(f[c].tolist() for c in columns[:4]),
                    path,
                    title=g.title,
                    asr_fail=100 * table.asr_fail,
                    paper_ba=f["paper_ba"].tolist() if given else None,
                    paper_asr=f["paper_asr"].tolist() if given else None,
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
    paths.extend(write_sweep_figures(table, out))
    return paths


def write_sweep_figures(table: ReportTable, out: Path) -> list[Path]:
    """BA / ASR against the swept value for each parameter sweep in the results
    (:func:`backdoorkit.experiment.sweeps.find_sweeps`): attack sweeps with a pair of lines per
    defense, defense sweeps with a pair per attack."""
    from backdoorkit.experiment.sweeps import find_sweeps
    from backdoorkit.viz.curves import plot_sweep

    order = {d: i for i, d in enumerate(table.defenses)}
    paths = []
    for side in ("attack", "defense"):
        for sw in find_sweeps(table.rows, side=side):
            points = sorted(sw.points, key=lambda p: (order.get(p["line"], len(order)), p["line"], p["x"]))
            name = "_".join(_slug(t) for t in (sw.dataset, sw.model, sw.method, sw.key))
            path = out / f"sweep_{name}.png"
            paths.append(plot_sweep(points, "x", path, group="line", title=sw.title, xlabel=sw.key))
    return paths


def write_gallery(table: ReportTable, out: Path, *, n: int = 6) -> tuple[Path | None, list[str]]:
    """The trigger gallery (:func:`backdoorkit.viz.triggers.attack_gallery`) of the report's attacks on
    its dataset(s), drawn into ``out/triggers_<dataset>.png``; returns the first path and notes on
    what could not be drawn (the report never fails for a gallery)."""
    from backdoorkit.viz.triggers import attack_gallery

    per_dataset: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
    for r in table.rows:
        cell = r.get("cell") if isinstance(r.get("cell"), dict) else {}
        attack = (cell.get("identity") or {}).get("attack") or {}
        name = attack.get("name") or r.get("attack_name")
        dataset = (cell.get("dataset") or {}).get("name") or r["dataset"]
        if r["status"] == "skipped" or not name or name == "none":
            continue
        per_dataset.setdefault(str(dataset), {}).setdefault(
            r["attack"], (str(name), attack.get("params") or {})
        )
    first, notes = None, []
    for dataset, attacks in per_dataset.items():
        path, why = attack_gallery(dataset, attacks, out / f"triggers_{_slug(Path(dataset).stem)}.png", n=n)
        notes += why
        first = first or path
    return first, notes


def _html(
    table: ReportTable,
    *,
    title: str,
    figures: Iterable[Path] = (),
    gallery: bool = True,
    work: Path | None = None,
) -> str:
    """The self-contained HTML report; figures not given are drawn into a temporary folder."""
    from backdoorkit.experiment.html import to_html

    with tempfile.TemporaryDirectory(prefix="bdk-report-") as tmp:
        where = work or Path(tmp)
        figs = list(figures) or write_figures(table, Path(tmp))
        picture, notes = write_gallery(table, where) if gallery else (None, [])
        return to_html(table, title=title, figures=figs, gallery=picture, notes=notes)


def _text(
    table: ReportTable, fmt: str, *, title: str = "Backdoor defenses", figures: Iterable[Path] = ()
) -> str:
    if fmt == "md":
        return to_markdown(table, title=title, figures=figures)
    if fmt == "csv":
        return to_csv(table)
    if fmt == "latex":
        return to_latex(table)
    if fmt == "html":
        return _html(table, title=title, figures=figures)
    raise ConfigError(f"unknown report format {fmt!r}; allowed: {', '.join(FORMATS)}")


def _paper_of(
    db: str | Path, paper: str | Path | PaperNumbers | None, auto_paper: bool, spec_hash: str | None
) -> PaperNumbers | None:
    if isinstance(paper, PaperNumbers):
        return paper
    if paper is not None:
        return load_paper(paper)
    found = find_paper(db, spec_hash) if auto_paper else None
    return load_paper(found) if found is not None else None


def report_table(
    db: str | Path,
    *,
    asr_fail: float = 0.2,
    ba_drop: float = 10.0,
    spec_hash: str | None = None,
    paper: str | Path | PaperNumbers | None = None,
    auto_paper: bool = True,
) -> ReportTable:
    """The table of a database, with the paper's numbers from ``paper`` or, unless ``auto_paper`` is
    false, from the file :func:`find_paper` finds."""
    rows = load_rows(db, spec_hash)
    return build_table(
        rows, asr_fail=asr_fail, ba_drop=ba_drop, paper=_paper_of(db, paper, auto_paper, spec_hash)
    )


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
    paper: str | Path | PaperNumbers | None = None,
    auto_paper: bool = True,
    gallery: bool = True,
) -> dict[str, Path]:
    """Write ``report.md`` / ``.csv`` / ``.tex`` / ``.html`` (and the figures) into ``out``.

    ``paper``: a paper-numbers file (or its loaded form) shown beside ours; by default one is looked
    up with :func:`find_paper`.  The HTML file embeds the figures (drawn even with ``figures=False``)
    and, with ``gallery``, the trigger gallery of the report's attacks.
    """
    formats = list(formats)
    for fmt in formats:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown report format {fmt!r}; allowed: {', '.join(FORMATS)}")
    table = report_table(
        db, asr_fail=asr_fail, ba_drop=ba_drop, spec_hash=spec_hash, paper=paper, auto_paper=auto_paper
    )
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    figs = write_figures(table, out) if figures else []
    written: dict[str, Path] = {f"figure{i}": p for i, p in enumerate(figs)}
    for fmt in formats:
        path = out / f"report.{SUFFIX[fmt]}"
        if fmt == "html":
            text = _html(table, title=title, figures=figs, gallery=gallery, work=out if figures else None)
        else:
            text = _text(table, fmt, title=title, figures=figs)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
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
    paper: str | Path | PaperNumbers | None = None,
    auto_paper: bool = True,
) -> str:
    """One format as text (no figure files; the HTML format embeds its figures)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown report format {fmt!r}; allowed: {', '.join(FORMATS)}")
    table = report_table(
        db, asr_fail=asr_fail, ba_drop=ba_drop, spec_hash=spec_hash, paper=paper, auto_paper=auto_paper
    )
    return _text(table, fmt)
