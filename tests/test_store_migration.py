"""The results database's schema migration: a version-1 file (metrics as columns of ``cells``) opens,
moves its metrics into the long ``metrics`` table and reports as before."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from backdoorkit.experiment.report import build_table, load_rows, render, to_markdown
from backdoorkit.experiment.store import SCHEMA_VERSION, ResultStore

# the CREATE statements of schema version 1, copied verbatim
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    spec_hash TEXT,
    spec_name TEXT,
    host TEXT,
    pid INTEGER,
    argv TEXT,
    started_at REAL,
    heartbeat REAL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS cells (
    cell_hash TEXT PRIMARY KEY,
    spec_hash TEXT NOT NULL,
    dataset TEXT NOT NULL,
    model TEXT NOT NULL,
    attack TEXT NOT NULL,
    defense TEXT NOT NULL,
    seed INTEGER NOT NULL,
    clean_fraction REAL,
    attack_name TEXT,
    defense_name TEXT,
    defense_kind TEXT,
    scenario TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'skipped')),
    ba REAL,
    asr REAL,
    asr_quantized REAL,
    clean_ba REAL,
    auroc REAL,
    tpr_at_1fpr REAL,
    tpr_at_5fpr REAL,
    iso_precision REAL,
    iso_recall REAL,
    info TEXT,
    cell TEXT,
    stage_seconds TEXT,
    wall_seconds REAL,
    device TEXT,
    versions TEXT,
    error TEXT,
    traceback TEXT,
    skip_reason TEXT,
    run_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS cells_spec ON cells (spec_hash);
CREATE INDEX IF NOT EXISTS cells_status ON cells (status);
"""

V1_METRICS = ("ba", "asr", "asr_quantized", "clean_ba", "auroc", "tpr_at_1fpr", "tpr_at_5fpr")


def write_v1(path: Path) -> None:
    """A small version-1 database as the old store left it: no defense, a repair, a detector, a skip."""
    con = sqlite3.connect(path)
    con.executescript(V1_SCHEMA)
    con.execute("PRAGMA user_version = 1")
    rows = [
        ("c0", "none", "none", "done", (0.98, 0.99, 0.97, 0.985, None, None, None)),
        ("c1", "ft", "repair", "done", (0.95, 0.03, 0.04, 0.985, None, None, None)),
        ("c2", "ss", "detector", "done", (0.94, 0.08, 0.5, 0.985, 0.91, 0.4, 0.7)),
        ("c3", "abl", "training", "skipped", (None,) * 7),
    ]
    for i, (h, defense, kind, status, values) in enumerate(rows):
        con.execute(
            "INSERT INTO cells (cell_hash, spec_hash, dataset, model, attack, defense, seed, clean_fraction, "
            "defense_name, defense_kind, status, skip_reason, info, attempts, created_at, "
            + ", ".join(V1_METRICS)
            + ") VALUES (?, 's1', 'digits', 'resnet18-w8', 'badnets', ?, 0, 0.1, ?, ?, ?, ?, '{}', 1, ?, "
            + ", ".join("?" * len(V1_METRICS))
            + ")",
            (
                h,
                defense,
                defense,
                kind,
                status,
                "needs S2" if status == "skipped" else None,
                time.time() + i,
                *values,
            ),
        )
    con.commit()
    con.close()


def test_version_1_database_migrates_and_reports(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    write_v1(path)
    before = to_markdown(build_table(load_rows(path)))  # load_rows opens (and migrates) it
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    columns = {r[1] for r in con.execute("PRAGMA table_info(cells)")}
    assert not columns & set(V1_METRICS)
    moved = dict(((h, n), v) for h, n, v in con.execute("SELECT cell_hash, name, value FROM metrics"))
    con.close()
    assert moved[("c1", "asr")] == pytest.approx(0.03) and moved[("c2", "auroc")] == pytest.approx(0.91)
    assert not any(h == "c3" for h, _ in moved) and ("c0", "auroc") not in moved
    rows = {r["defense"]: r for r in load_rows(path)}
    assert rows["ft"]["ba"] == pytest.approx(0.95) and rows["ft"]["auroc"] is None
    assert rows["ss"]["metrics"]["tpr_at_5fpr"] == pytest.approx(0.7)
    # the report shows the migrated numbers in the usual layout
    lines = {line.split("|")[1].strip(): line for line in before.splitlines() if line.startswith("| ")}
    assert "98.0" in lines["none"] and "99.0" in lines["none"] and "98.5" in lines["(clean model)"]
    assert "**95.0**" in lines["ft"] and "**3.0**" in lines["ft"]
    assert "## Detection" in before and "91.0" in before and "needs S2" in before
    # opening again is a no-op, and a run can go on writing into the migrated file
    assert render(path) == before
    store = ResultStore(path)
    with store.transaction() as con:
        con.execute("UPDATE cells SET status = 'running', run_id = 'r' WHERE cell_hash = 'c1'")
    assert store.finish("c1", "r", {"status": "done", "metrics": {"ba": 0.9, "asr": 0.01, "new": 2.0}})
    assert {r["cell_hash"]: r for r in store.rows()}["c1"]["metrics"] == {"ba": 0.9, "asr": 0.01, "new": 2.0}
    store.close()


def test_newer_schema_is_refused_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    write_v1(path)
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(Exception, match="schema version"):
        load_rows(path)
    assert path.read_bytes() == before


def test_a_finished_cell_is_in_the_database_file_while_the_run_goes_on(tmp_path: Path) -> None:
    """A results file copied (or committed) mid-run, without its ``-wal`` file, holds every finished cell."""
    path = tmp_path / "live.db"
    write_v1(path)
    store = ResultStore(path)
    with store.transaction() as con:
        con.execute("UPDATE cells SET status = 'running', run_id = 'r' WHERE cell_hash = 'c1'")
    assert store.finish("c1", "r", {"status": "done", "metrics": {"ba": 0.5, "asr": 0.25}})
    copy = tmp_path / "copy.db"
    copy.write_bytes(path.read_bytes())  # the store's connection is still open: a run still going
    con = sqlite3.connect(copy)
    got = dict(con.execute("SELECT name, value FROM metrics WHERE cell_hash = 'c1'").fetchall())
    con.close()
    store.close()
    assert got == {"ba": 0.5, "asr": 0.25}


def test_a_database_another_run_is_creating_is_joined_not_refused(tmp_path: Path) -> None:
    """Two runs started on one new ``--db``: the first has written the SQLite WAL header but not yet its
    schema when the second looks.  The second must join (it creates the same schema), not call the file
    "not a results database" (seen once in CI, ``test_two_runs_on_one_database``).  A file with other
    tables is still refused and left as it was."""
    from backdoorkit.errors import ConfigError

    creating = tmp_path / "r.db"
    con = sqlite3.connect(creating)
    assert con.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"  # header only, no table yet
    con.close()
    assert creating.stat().st_size > 0
    store = ResultStore(creating)
    tables = {r[0] for r in sqlite3.connect(creating).execute("SELECT name FROM sqlite_master")}
    assert {"runs", "cells", "metrics"} <= tables
    del store
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    before = other.read_bytes()
    with pytest.raises(ConfigError, match="not a results database"):
        ResultStore(other)
    assert other.read_bytes() == before
