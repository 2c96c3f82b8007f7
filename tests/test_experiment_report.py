"""Reports: the papers' layout from a results database (synthetic rows), formats, marks, figures, the demo."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from backdoorkit.errors import ConfigError
from backdoorkit.experiment.report import (
    build_table,
    load_rows,
    render,
    to_csv,
    to_latex,
    to_markdown,
    write_report,
)
from backdoorkit.experiment.store import WELL_KNOWN_METRICS, ResultStore

# (defense, kind, attack, seed, BA, ASR): 'strong' is best, 'leaky' keeps the backdoor, 'lossy' loses BA
RESULTS = [
    ("none", "none", "badnets", 0, 0.98, 0.99),
    ("none", "none", "badnets", 1, 0.96, 0.97),
    ("strong", "repair", "badnets", 0, 0.95, 0.02),
    ("strong", "repair", "badnets", 1, 0.93, 0.04),
    ("leaky", "repair", "badnets", 0, 0.94, 0.60),
    ("leaky", "repair", "badnets", 1, 0.92, 0.50),
    ("lossy", "repair", "badnets", 0, 0.70, 0.01),
    ("lossy", "repair", "badnets", 1, 0.72, 0.03),
    ("none", "none", "blended", 0, 0.97, 0.95),
    ("strong", "repair", "blended", 0, 0.96, 0.05),
    ("leaky", "repair", "blended", 0, 0.95, 0.10),
    ("detect", "detector", "badnets", 0, 0.93, 0.08),
]
SCAN = [
    {"skip": s, "gamma": g, "ba": 0.9, "asr": g} for s in ("layer1.0", "layer2.0") for g in (1.0, 0.5, 0.0)
]


def add_row(store: ResultStore, i: int, **row: Any) -> None:
    """A ``cells`` row written directly; well-known metric keywords go to the ``metrics`` table."""
    metrics = {k: row.pop(k) for k in WELL_KNOWN_METRICS if k in row}
    base: dict[str, Any] = {
        "cell_hash": f"cell{i:04d}",
        "spec_hash": "spec0001",
        "dataset": "digits",
        "model": "resnet18-w8",
        "seed": 0,
        "clean_fraction": 0.1,
        "status": "done",
        "created_at": time.time() + i,
        "attempts": 1,
    }
    base.update(row)
    if isinstance(base.get("info"), dict):
        base["info"] = json.dumps(base["info"])
    cols = ", ".join(base)
    marks = ", ".join("?" * len(base))
    with store.transaction() as con:
        con.execute(f"INSERT INTO cells ({cols}) VALUES ({marks})", tuple(base.values()))
        con.executemany(
            "INSERT INTO metrics (cell_hash, name, value) VALUES (?, ?, ?)",
            [(base["cell_hash"], k, v) for k, v in metrics.items()],
        )


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "results.db"
    store = ResultStore(path)
    i = 0
    for defense, kind, attack, seed, ba, asr in RESULTS:
        info: dict[str, Any] = {"scan": SCAN, "layers": ["layer2.0"]} if defense == "strong" else {}
        extra = {"auroc": 0.91, "tpr_at_1fpr": 0.4, "tpr_at_5fpr": 0.7} if kind == "detector" else {}
        add_row(
            store,
            i,
            defense=defense,
            defense_name=defense,
            defense_kind=kind,
            attack=attack,
            attack_name=attack,
            seed=seed,
            ba=ba,
            asr=asr,
            asr_quantized=asr,
            clean_ba=0.985,
            info=info,
            **extra,
        )
        i += 1
    add_row(
        store,
        i,
        defense="leaky",
        defense_kind="repair",
        attack="blended",
        seed=1,
        status="failed",
        error="RuntimeError: out of patience",
        traceback="Traceback ...",
    )
    add_row(
        store,
        i + 1,
        defense="robust",
        defense_kind="training",
        attack="badnets",
        status="skipped",
        skip_reason="robust needs S2 (an untrusted training set and a clean holdout), but ...",
    )
    store.close()
    return path


def test_markdown_layout_marks_and_lists(db: Path) -> None:
    table = build_table(load_rows(db))
    md = to_markdown(table)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Defense"))
    assert (
        "digits / badnets BA" in header
        and "digits / badnets ASR" in header
        and "digits / blended BA" in header
    )
    row = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ") and "---" not in line}
    assert set(row) >= {"Defense", "none", "(clean model)", "strong", "leaky", "lossy", "detect"}
    order = [line.split("|")[1].strip() for line in lines if line.startswith("| ") and "---" not in line]
    assert order[1:3] == ["none", "(clean model)"]
    # mean ± std over the two seeds, in percent
    assert "97.0 ± 1.4" in row["none"]
    # best per column: strong has the lowest badnets ASR among defenses? lossy does (2.0); strong the best BA
    cells = [c.strip() for c in row["strong"].split("|")[2:-1]]
    assert cells[0] == "**94.0 ± 1.4**"
    assert cells[1] == "3.0 ± 1.4"
    assert "**2.0 ± 1.4**" in row["lossy"]
    # failures: leaky's ASR (55 %), lossy's BA (26 points below no defense); none is never marked
    assert "55.0 ± 7.1†" in row["leaky"]
    assert "71.0 ± 1.4†" in row["lossy"]
    assert "†" not in row["none"] and "†" not in row["strong"]
    assert "## Skipped combinations" in md and "robust needs S2" in md
    assert "## Failed cells" in md and "RuntimeError: out of patience" in md
    assert "## Detection" in md and "91.0" in md


def test_thresholds_are_configurable(db: Path) -> None:
    md = to_markdown(build_table(load_rows(db), asr_fail=0.9, ba_drop=50))
    table_lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert table_lines and not any("†" in line for line in table_lines)
    strict = to_markdown(build_table(load_rows(db), asr_fail=0.01))
    assert any("3.0 ± 1.4†" in line for line in strict.splitlines() if line.startswith("| strong"))
    with pytest.raises(Exception, match="asr-fail"):
        build_table(load_rows(db), asr_fail=20)


def test_csv_and_latex_parse(db: Path) -> None:
    table = build_table(load_rows(db))
    parsed = list(csv.DictReader(io.StringIO(to_csv(table))))
    leaky = next(r for r in parsed if r["defense"] == "leaky" and r["attack"] == "badnets")
    assert (
        float(leaky["asr_pct"]) == pytest.approx(55.0) and leaky["fail_asr"] == "1" and leaky["seeds"] == "2"
    )
    blended = next(r for r in parsed if r["defense"] == "leaky" and r["attack"] == "blended")
    assert blended["failed_cells"] == "1"
    strong = next(r for r in parsed if r["defense"] == "strong" and r["attack"] == "badnets")
    assert strong["best_ba"] == "1" and float(strong["clean_ba_pct"]) == pytest.approx(98.5)

    tex = to_latex(table)
    assert tex.count("{") == tex.count("}")
    assert "\\begin{tabular}{l rr rr}" in tex and "\\multicolumn{2}{c}{digits / badnets}" in tex
    assert "\\textbf{" in tex and "$^\\dagger$" in tex and "$\\pm$" in tex
    rows = [line for line in tex.splitlines() if line.endswith("\\\\")]
    spans = rows[0].count("\\multicolumn{2}") * 2 + 1
    assert spans == 5 and all(line.count(" & ") == 4 for line in rows[1:])


def test_write_report_and_figures(db: Path, tmp_path: Path) -> None:
    out = write_report(db, tmp_path / "report", formats=("md", "csv", "latex"))
    assert {"md", "csv", "latex"} <= set(out)
    names = {p.name for p in out.values()}
    assert "bars_digits_badnets.png" in names and "bars_digits_blended.png" in names
    assert any(n.startswith("scan_strong") for n in names)
    for p in out.values():
        assert p.is_file() and p.stat().st_size > 0
    assert "![bars_digits_badnets](bars_digits_badnets.png)" in out["md"].read_text()


def test_report_command(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from backdoorkit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["report", str(db), "--format", "csv"])
    assert exc.value.code in (0, None)
    assert capsys.readouterr().out == render(db, "csv")
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path / "missing.db")])
    assert exc.value.code == 2
    assert "no such results database" in capsys.readouterr().err


def test_any_metric_name_is_stored_and_reported(tmp_path: Path) -> None:
    """A result with a metric no code knows (``my_metric``) is stored, read back and reported."""
    store = ResultStore(tmp_path / "r.db")
    for i, (defense, kind, metrics) in enumerate(
        [
            ("none", "none", {"ba": 0.97, "asr": 0.99}),
            ("toy", "repair", {"ba": 0.95, "asr": 0.05, "my_metric": 3.25, "nan_metric": float("nan")}),
        ]
    ):
        add_row(store, i, defense=defense, defense_kind=kind, attack="badnets", status="running", run_id="r")
        assert store.finish(f"cell{i:04d}", "r", {"status": "done", "metrics": metrics, "info": {}})
    rows = {r["defense"]: r for r in store.rows()}
    assert rows["toy"]["metrics"] == {"ba": 0.95, "asr": 0.05, "my_metric": 3.25}
    assert rows["toy"]["ba"] == 0.95 and rows["toy"]["auroc"] is None
    frame = store.metrics_frame()
    assert set(frame["name"]) == {"ba", "asr", "my_metric"}
    assert frame.loc[frame["name"] == "my_metric", ["defense", "attack", "value"]].values.tolist() == [
        ["toy", "badnets", 3.25]
    ]
    # a reset cell loses its metric rows
    store.reset(["cell0001"])
    assert "cell0001" not in set(store.metrics_frame()["cell_hash"])
    with store.transaction() as con:
        con.execute("UPDATE cells SET status = 'running', run_id = 'r' WHERE cell_hash = 'cell0001'")
    store.finish("cell0001", "r", {"status": "done", "metrics": {"ba": 0.95, "my_metric": 3.25}})
    store.close()

    table = build_table(load_rows(tmp_path / "r.db"))
    md = to_markdown(table)
    assert "## Repair" in md and "my_metric |" in md
    assert next(line for line in md.splitlines() if line.startswith("| toy") and "3.25" in line)
    parsed = list(csv.DictReader(io.StringIO(to_csv(table))))
    toy = next(r for r in parsed if r["defense"] == "toy")
    assert float(toy["my_metric"]) == pytest.approx(3.25) and toy["my_metric_std"] == ""


def test_report_on_other_files_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    import sqlite3

    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for path in (text, other, empty):
        before = path.read_bytes()
        with pytest.raises(ConfigError, match="not a results database") as exc:
            render(path)
        assert "\n" not in str(exc.value)
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(path.name)) == [path.name]


def test_reduced_demo_runs_and_reports(tmp_path: Path) -> None:
    """The demo spec with a tiny budget (the full demo takes minutes): table printed, report written."""
    from rich.console import Console

    from backdoorkit.attacks import ATTACKS
    from backdoorkit.experiment.demo import demo_spec, run_demo

    spec = demo_spec(
        datasets=[{"name": "digits", "subset": 300, "test_subset": 100}],
        models=[{"arch": "resnet18", "width": 4}],
        train={"epochs": 1, "batch_size": 64},
        defenses=["none"],
        device="cpu",
    )
    console = Console(file=io.StringIO(), width=200)
    summary, written = run_demo(
        tmp_path / "demo", spec=spec, quiet=False, live=False, console=console, cache_dir=tmp_path / "cache"
    )
    printed = console.file.getvalue()
    demo_attacks = [a.name for a in demo_spec().attacks]
    assert "wanet" not in demo_attacks  # its ~6 % ASR on digits read as a broken demo (issue 11)
    expected = [a for a in demo_attacks if a in ATTACKS]
    assert summary.failed == 0 and summary.done == len(expected)
    md = written["md"].read_text()
    for attack in expected:
        assert f"digits / {attack} BA" in md
        assert attack in printed
    if len(expected) < len(demo_attacks):
        assert "not registered" in md
    html = written["html"].read_text()
    assert written["html"].name == "report.html" and '<table class="main">' in html
    assert "data:image/png;base64," in html and "Trigger gallery" in html
    assert (tmp_path / "demo" / "results.db").is_file()
    again, _ = run_demo(tmp_path / "demo", spec=spec, quiet=True, cache_dir=tmp_path / "cache")
    assert again.done == 0 and again.already == len(expected)


# ---- paper numbers beside ours (issue 11, section 6) ----
PAPER_YAML = """\
source: "A paper, Table 1 (digits)"
rows:
  - {dataset: digits, attack: badnets, defense: none, ba: 99.1, asr: 100.0}
  - {dataset: digits, attack: badnets, defense: strong, ba: 97.5, asr: 0.5, iso_recall: 88.0}
  - {dataset: digits, attack: badnets, defense: clean, ba: 99.3}
  - {dataset: digits, attack: badnets, defense: detect, auroc: 97.0}
  - {dataset: digits, attack: wanet, defense: none, ba: 98.0, asr: 97.0}
  - {dataset: digits, attack: badnets, defense: absent, ba: 1.0, asr: 1.0}
"""


def _paper(tmp_path: Path, text: str = PAPER_YAML, name: str = "table.paper.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_paper_numbers_beside_ours_in_md_csv_latex(db: Path, tmp_path: Path) -> None:
    from backdoorkit.experiment.report import load_paper

    table = build_table(load_rows(db), paper=load_paper(_paper(tmp_path)))
    md = to_markdown(table)
    header = next(line for line in md.splitlines() if line.startswith("| Defense"))
    cols = [c.strip() for c in header.split("|")[1:-1]]
    # the paper's columns sit beside ours, only in the column group the paper covers
    assert cols[1:5] == [
        "digits / badnets BA",
        "digits / badnets BA (paper)",
        "digits / badnets ASR",
        "digits / badnets ASR (paper)",
    ]
    assert "digits / blended BA (paper)" not in header
    main = md.split("\n\n")[1]  # the main table (the tables per kind come after the legend)
    row = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in main.splitlines()
    }
    assert row["none"][1] == "99.1" and row["none"][3] == "100.0"
    assert row["strong"][1] == "97.5" and row["strong"][3] == "0.5"
    assert row["(clean model)"][1] == "99.3" and row["(clean model)"][3] == "–"
    assert row["leaky"][1] == "–"  # the paper gives nothing for it
    assert "A paper, Table 1 (digits)" in md
    # other metrics beside ours in the tables per kind (percent as the paper gives them)
    detection = md[md.index("## Detection") :]
    header = next(line for line in detection.splitlines() if line.startswith("| Detector"))
    assert [c.strip() for c in header.split("|")[1:4]] == ["Detector", "Setting", "AUROC"]
    assert "AUROC (paper)" in header
    row = next(line for line in detection.splitlines() if line.startswith("| detect | digits / badnets"))
    assert [c.strip() for c in row.split("|")[3:5]] == ["91.0", "97.0"]
    # rows that match nothing are listed, never dropped silently
    assert "## Paper rows without a result here" in md
    assert "digits / wanet / none: no such column group" in md
    assert "digits / badnets / absent: no such defense in these results" in md

    parsed = list(csv.DictReader(io.StringIO(to_csv(table))))
    strong = next(r for r in parsed if r["defense"] == "strong" and r["attack"] == "badnets")
    assert float(strong["paper_ba_pct"]) == pytest.approx(97.5) and float(strong["paper_asr_pct"]) == 0.5
    assert float(strong["paper_iso_recall"]) == pytest.approx(0.88)
    blended = next(r for r in parsed if r["defense"] == "strong" and r["attack"] == "blended")
    assert blended["paper_ba_pct"] == ""

    tex = to_latex(table)
    assert "\\begin{tabular}{l rrrr rr}" in tex and "\\multicolumn{4}{c}{digits / badnets}" in tex
    assert "\\cmidrule(lr){2-5} \\cmidrule(lr){6-7}" in tex and "BA (paper)" in tex
    rows = [line for line in tex.splitlines() if line.endswith("\\\\")]
    assert all(line.count(" & ") == 6 for line in rows[1:])


def test_paper_matches_registered_names_when_labels_differ(tmp_path: Path) -> None:
    from backdoorkit.experiment.report import load_paper

    path = tmp_path / "results.db"
    store = ResultStore(path)
    add_row(
        store,
        0,
        defense="none",
        defense_name="none",
        defense_kind="none",
        attack="BadNets",
        attack_name="badnets",
        ba=0.9,
        asr=0.95,
    )
    add_row(
        store,
        1,
        defense="SSFT",
        defense_name="ssft",
        defense_kind="repair",
        attack="BadNets",
        attack_name="badnets",
        ba=0.88,
        asr=0.02,
    )
    store.close()
    paper = _paper(
        tmp_path, "source: s\nrows:\n  - {dataset: digits, attack: badnets, defense: ssft, ba: 89, asr: 1}\n"
    )
    md = to_markdown(build_table(load_rows(path), paper=load_paper(paper)))
    row = next(line for line in md.splitlines() if line.startswith("| SSFT"))
    assert [c.strip() for c in row.split("|")[2:-1]] == ["88.0", "89.0", "2.0", "1.0"]


def test_paper_file_errors_are_one_line(tmp_path: Path) -> None:
    from backdoorkit.experiment.report import load_paper

    for text, match in [
        ("rows: [{dataset: d, attack: a, defense: none, ba: 1}]\n", "source"),
        ("source: s\nrows: []\n", "rows"),
        ("source: s\nrows: [{dataset: d, attack: a, defense: none, ba: high}]\n", "ba"),
        ("source: s\nrows: [{dataset: d, attack: a, defense: none, auroc: high}]\n", "auroc"),
        ("source: s\nrows:\n  none: {badnets: [1, 2]}\n", "rows"),
        ("source: [unclosed\n", "YAML"),
    ]:
        with pytest.raises(ConfigError, match=match) as exc:
            load_paper(_paper(tmp_path, text))
        assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="no such paper-numbers file"):
        load_paper(tmp_path / "missing.paper.yaml")


def test_paper_file_found_through_the_runs_table(db: Path, tmp_path: Path) -> None:
    """A spec run from anywhere: its ``<stem>.paper.yaml`` next to it reaches the report by itself."""
    from backdoorkit.experiment.report import find_paper

    assert find_paper(db) is None
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    spec = spec_dir / "table.yaml"
    spec.write_text("name: table\n")
    paper = _paper(spec_dir)
    store = ResultStore(db)
    store.start_run("spec0001", "table", ["run", str(spec), "--jobs", "2"])
    store.close()
    assert find_paper(db) == paper
    out = write_report(db, tmp_path / "rep", formats=("md",), figures=False)
    assert "digits / badnets BA (paper)" in out["md"].read_text()
    assert "BA (paper)" not in render(db, "md", auto_paper=False)
    # a spec naming its file with `paper:` wins over the file beside it
    other = _paper(spec_dir, PAPER_YAML.replace("99.1", "42.4"), "elsewhere.yaml")
    spec.write_text("name: table\npaper: elsewhere.yaml\n")
    assert find_paper(db) == other and "42.4" in render(db, "md")


def test_report_command_paper_options(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--paper FILE`` puts that file's numbers beside ours; ``--no-paper`` drops the one found by
    itself; a missing file or both options at once are one line and exit 2."""
    from backdoorkit.cli import main
    from backdoorkit.experiment.spec import Spec

    def report(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc:
            main(["report", str(db), *args])
        out = capsys.readouterr()
        return exc.value.code or 0, out.out, out.err

    paper = _paper(tmp_path)
    code, out, _ = report("--paper", str(paper))
    assert code == 0 and "digits / badnets BA (paper)" in out and "A paper, Table 1 (digits)" in out
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    (spec_dir / "table.yaml").write_text("name: table\n")
    _paper(spec_dir)
    store = ResultStore(db)
    store.start_run("spec0001", "table", ["run", str(spec_dir / "table.yaml")])
    store.close()
    assert "BA (paper)" in report()[1]
    code, out, _ = report("--no-paper")
    assert code == 0 and "BA (paper)" not in out
    code, _, err = report("--paper", str(tmp_path / "missing.yaml"))
    assert code == 2 and "no such paper-numbers file" in err and "Traceback" not in err
    code, _, err = report("--paper", str(paper), "--no-paper")
    assert code == 2 and "choose one" in err
    # the spec schema takes the paper: key the report reads
    assert (
        Spec(datasets=["digits"], models=["resnet18"], attacks=["badnets"], paper="x.yaml").paper == "x.yaml"
    )


def test_no_best_is_named_in_a_column_with_cells_still_to_run(db: Path) -> None:
    """A partial column (a defense still pending) bolds nothing: its leader may not stay the best.
    The other columns keep their marks."""
    store = ResultStore(db)
    add_row(store, 900, defense="later", defense_kind="repair", attack="badnets", status="pending")
    store.close()
    md = to_markdown(build_table(load_rows(db)))
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Defense"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    row = {line.split("|")[1].strip(): line for line in lines[start:end] if "---" not in line}
    header = [c.strip() for c in row["Defense"].split("|")[2:-1]]
    badnets = [i for i, c in enumerate(header) if c.startswith("digits / badnets")]
    others = [i for i, c in enumerate(header) if not c.startswith("digits / badnets")]
    cells = {d: [c.strip() for c in line.split("|")[2:-1]] for d, line in row.items() if d != "Defense"}
    assert cells["later"][badnets[0]] == "pending"
    assert not any("**" in cells[d][i] for d in cells for i in badnets)
    assert any("**" in cells[d][i] for d in cells for i in others)
    assert "every defense finished" in md


def test_isolation_fractions_in_percent_and_counts_in_full(tmp_path: Path) -> None:
    """PT's isolation by M_s is a fraction like M''s (shown in %, labelled), a row count keeps its digits."""
    store = ResultStore(tmp_path / "r.db")
    metrics = {
        "ba": 0.74,
        "asr": 0.98,
        "iso_precision": 0.133,
        "iso_base_precision": 0.459,
        "isolated": 1900.0,
    }
    for i, (defense, kind, m) in enumerate(
        [("none", "none", {"ba": 0.74, "asr": 0.98}), ("PT", "training", metrics)]
    ):
        add_row(store, i, defense=defense, defense_kind=kind, attack="badnets", status="running", run_id="r")
        assert store.finish(f"cell{i:04d}", "r", {"status": "done", "metrics": m, "info": {}})
    store.close()
    md = to_markdown(build_table(load_rows(tmp_path / "r.db")))
    assert "isolation precision by M_s" in md
    line = next(line for line in md.splitlines() if line.startswith("| PT") and "13.3" in line)
    assert "45.9" in line and "1900" in line and "0.459" not in line and "e+03" not in line


def test_a_metric_table_too_wide_for_the_terminal_is_printed_one_row_per_metric(db: Path) -> None:
    """The demo's detection table has ten metrics per attack: 30 columns, unreadable at 80 characters
    (every cell collapsed to nothing); transposed, each value is on its own line."""
    from rich.console import Console

    from backdoorkit.experiment.report import print_summary

    table = build_table(load_rows(db))
    wide = Console(file=io.StringIO(), width=400)
    print_summary(table, wide)
    assert "┃ Detector ┃ Setting" in wide.file.getvalue() and "┃ AUROC" in wide.file.getvalue()
    narrow = Console(file=io.StringIO(), width=36)  # 4 columns x 10 characters do not fit
    print_summary(table, narrow)
    text = narrow.file.getvalue()
    detection = text[text.index("Detection") :]
    for label in ("AUROC", "TPR@1%", "TPR@5%"):
        line = next(line for line in detection.splitlines() if label in line)
        assert any(ch.isdigit() for ch in line.split(label)[1]), line  # the value sits on the label's line


def test_many_settings_turn_the_main_table_one_row_per_setting(tmp_path: Path) -> None:
    """Three defenses over six attacks: 18 BA / ASR columns side by side are hard to read, so Markdown,
    HTML and the terminal give one row per setting and a BA / ASR pair per defense, with the same
    values and marks; a report of few settings keeps one row per defense."""
    from rich.console import Console

    from backdoorkit.experiment.html import to_html
    from backdoorkit.experiment.report import print_summary

    store = ResultStore(tmp_path / "r.db")
    attacks = [f"attack{i}" for i in range(6)]
    i = 0
    for k, attack in enumerate(attacks):
        for defense, kind, ba, asr in (
            ("none", "none", 0.90, 0.99),
            ("fix", "repair", 0.88, 0.01 * k),
            ("weak", "repair", 0.89, 0.5),
        ):
            add_row(
                store, i, defense=defense, defense_kind=kind, attack=attack, ba=ba, asr=asr, clean_ba=0.91
            )
            i += 1
    store.close()
    table = build_table(load_rows(tmp_path / "r.db"))
    assert table.by_setting
    lines = to_markdown(table).splitlines()
    header = next(line for line in lines if line.startswith("| Setting"))
    assert [c.strip() for c in header.split("|")[2:-1]] == [
        *("none BA", "none ASR", "(clean model) BA", "fix BA", "fix ASR", "weak BA", "weak ASR"),
    ]
    row = next(line for line in lines if line.startswith("| digits / attack3 "))
    assert [c.strip() for c in row.split("|")[2:-1]] == [
        *("90.0", "99.0", "91.0", "88.0", "**3.0**", "**89.0**", "50.0†"),
    ]
    assert "best defense per setting" in to_markdown(table)
    html = to_html(table)
    assert '<th rowspan="2">Setting</th>' in html and html.count("<tr><td>digits / attack") == 6
    console = Console(file=io.StringIO(), width=200)
    print_summary(table, console)
    assert "digits / attack5" in console.file.getvalue()

    table.paper[("none", table.groups[0].title, "asr")] = 0.97  # the paper's number, for one defense only
    header = next(line for line in to_markdown(table).splitlines() if line.startswith("| Setting"))
    assert "none ASR (paper)" in header and "fix ASR (paper)" not in header and "BA (paper)" not in header

    few = build_table([r for r in load_rows(tmp_path / "r.db") if r["attack"] in attacks[:2]])
    assert not few.by_setting
    assert any(line.startswith("| Defense") for line in to_markdown(few).splitlines())


def test_a_repair_with_a_verdict_reports_its_own_verdict_metrics_once(tmp_path: Path) -> None:
    """NC unlearning records ``nc_infected`` / ``nc_anomaly_index`` and keeps NC's verdict in its info:
    the repair table shows those two (labelled, the flag in %), not a second ``infected`` column."""
    store = ResultStore(tmp_path / "r.db")
    verdict = {"verdict": {"infected": True, "anomaly_index": 3.6}}
    rows = [
        ("none", "none", {"ba": 0.75, "asr": 0.91}, {}),
        (
            "NC unlearning",
            "repair",
            {"ba": 0.7, "asr": 0.04, "nc_infected": 1.0, "nc_anomaly_index": 3.6},
            verdict,
        ),
        ("Neural Cleanse", "inspector", {"ba": 0.75, "asr": 0.91, "anomaly_index": 3.6}, verdict),
    ]
    for i, (defense, kind, metrics, info) in enumerate(rows):
        add_row(store, i, defense=defense, defense_kind=kind, attack="badnets", status="running", run_id="r")
        assert store.finish(f"cell{i:04d}", "r", {"status": "done", "metrics": metrics, "info": info})
    store.close()
    md = to_markdown(build_table(load_rows(tmp_path / "r.db")))
    repair = md[md.index("## Repair") : md.index("## Inspection")]
    assert "| Defense | Setting | NC anomaly index | NC infected |" in repair
    assert "| NC unlearning | digits / badnets | 3.6 | 100.0 |" in repair
    inspection = md[md.index("## Inspection") :]
    assert "| Neural Cleanse | digits / badnets | 100.0 |" in inspection


def _sweep_db(tmp_path: Path) -> Path:
    """BadRes rows as a sweep spec writes them: the reference (alpha 0.5, layer 0), an alpha sweep, a
    layer sweep, two seeds of one point; a two-point comparison-structure 'sweep'; a 'none' row."""
    path = tmp_path / "sweeps.db"
    store = ResultStore(path)
    base = {"alpha": 0.5, "layer": 0, "rate": 0.1, "target": 0, "residual": "attn", "size": None}
    points = [
        ("BadRes", "badres", {}, 0, 0.95, 0.99),
        ("BadRes", "badres", {}, 1, 0.93, 0.97),
        ("BadRes alpha 0.2", "badres", {"alpha": 0.2}, 0, 0.94, 0.90),
        ("BadRes alpha 0.8", "badres", {"alpha": 0.8}, 0, 0.96, 1.00),
        ("BadRes k=3", "badres", {"layer": 3}, 0, 0.95, 0.98),
        ("BadRes k=5", "badres", {"layer": 5}, 0, 0.94, 0.60),
        ("BadRes mlp", "badres", {"residual": "mlp"}, 0, 0.94, 0.99),
        ("Compare beta 0.2", "badres_compare", {"beta": 0.2}, 0, 0.90, 0.70),
        ("Compare beta 0.8", "badres_compare", {"beta": 0.8}, 0, 0.88, 0.80),
    ]
    i = 0
    for defense in ("none", "ft"):
        for label, method, change, seed, ba, asr in points:
            params = {**base, **change}
            if method == "badres_compare":
                params = {k: v for k, v in params.items() if k != "alpha"} | {"beta": change["beta"]}
            identity = {"attack": {"name": method, "params": params}}
            add_row(
                store, i, defense=defense, defense_name=defense, defense_kind="none" if defense == "none"
                else "repair", attack=label, attack_name=method, seed=seed, ba=ba,
                asr=asr if defense == "none" else asr / 2, cell=json.dumps({"identity": identity}),
            )  # fmt: skip
            i += 1
    add_row(store, i, defense="none", defense_kind="none", attack="none", attack_name="none", ba=0.96)
    store.close()
    return path


def test_sweeps_are_found_from_the_stored_attack_parameters(tmp_path: Path) -> None:
    from backdoorkit.experiment.sweeps import find_sweeps

    sweeps = {(s.method, s.key): s for s in find_sweeps(load_rows(_sweep_db(tmp_path)))}
    # the reference row is a point of both sweeps; two beta values and the mlp row are no sweep
    assert set(sweeps) == {("badres", "alpha"), ("badres", "layer")}
    alpha = sweeps[("badres", "alpha")]
    assert alpha.values == [0.2, 0.5, 0.8] and alpha.fixed["layer"] == 0
    assert {p["line"] for p in alpha.points} == {"none", "ft"} and len(alpha.points) == 6
    ref = next(p for p in alpha.points if p["x"] == 0.5 and p["line"] == "none")
    assert ref["ba"] == pytest.approx(0.94) and ref["asr"] == pytest.approx(0.98)  # mean over seeds
    assert ref["labels"] == ["BadRes"]
    k5 = next(p for p in sweeps[("badres", "layer")].points if p["x"] == 5 and p["line"] == "ft")
    assert k5["asr"] == pytest.approx(0.30) and sweeps[("badres", "layer")].values == [0, 3, 5]
    two = {(s.method, s.key) for s in find_sweeps(load_rows(tmp_path / "sweeps.db"), min_points=2)}
    assert ("badres_compare", "beta") in two


def test_report_draws_a_figure_per_sweep(tmp_path: Path) -> None:
    out = write_report(_sweep_db(tmp_path), tmp_path / "report", formats=("md", "html"))
    names = {p.name for p in out.values()}
    assert {"sweep_digits_resnet18-w8_badres_alpha.png", "sweep_digits_resnet18-w8_badres_layer.png"} <= names
    assert not any(n.startswith("sweep_") and "compare" in n for n in names)
    assert "sweep_digits_resnet18-w8_badres_alpha.png" in out["md"].read_text()


def test_a_defense_parameter_sweep_has_a_line_per_attack(tmp_path: Path) -> None:
    from backdoorkit.experiment.sweeps import find_sweeps

    store = ResultStore(tmp_path / "d.db")
    i = 0
    for attack in ("badnets", "blended"):
        for gamma in (0.0, 0.2, 0.5, 1.0):
            identity = {"defense": {"name": "ssft", "params": {"gamma": gamma, "epochs": 10}}}
            add_row(
                store, i, defense=f"ssft gamma={gamma}", defense_name="ssft", defense_kind="repair",
                attack=attack, attack_name=attack, ba=0.9, asr=gamma, cell=json.dumps({"identity": identity}),
            )  # fmt: skip
            i += 1
    store.close()
    rows = load_rows(tmp_path / "d.db")
    assert find_sweeps(rows) == []  # no attack parameters stored
    (sweep,) = find_sweeps(rows, side="defense")
    assert (sweep.method, sweep.key, sweep.values, sweep.fixed) == (
        "ssft",
        "gamma",
        [0, 0.2, 0.5, 1],
        {"epochs": 10},
    )
    assert {p["line"] for p in sweep.points} == {"badnets", "blended"}
    out = write_report(tmp_path / "d.db", tmp_path / "report", formats=("md",))
    assert "sweep_digits_resnet18-w8_ssft_gamma.png" in {p.name for p in out.values()}
