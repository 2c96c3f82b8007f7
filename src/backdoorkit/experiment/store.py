"""The results database: SQLite in WAL mode, one row per cell, metrics in a long table.

Crash safety and concurrency:

* every write is one short ``BEGIN IMMEDIATE`` transaction and the journal is a write-ahead log, so a
  process killed at any point (``kill -9`` included) leaves the database consistent;
* the log is checkpointed after every finished cell, so the database file alone (copied, or committed
  while a run is still going) holds every result written so far;
* ``cell_hash`` is the primary key: a cell has exactly one row whatever runs touch the database;
* a run *claims* a cell (``pending -> running``, stamped with its run id) in a transaction before
  computing it; a cell held by a live run is never claimed by another.  A run is live while its
  process exists (same host) and its heartbeat (refreshed every few seconds by a thread) is recent,
  so after a crash ``--resume`` reclaims the cells the dead run left ``running``;
* results are written only by the run that holds the claim.

Table ``cells``: the cell's coordinates (dataset, model, attack, defense labels, seed, clean fraction),
the registered method names, scenario, status (``pending``, ``running``, ``done``, ``failed``,
``skipped``), the defense's info and the cell description (JSON), wall time per stage (JSON), device,
package versions with the CPU model and instruction set (JSON), the error line and traceback, the
skip reason, attempts and timestamps.

Table ``metrics(cell_hash, name, value)``: every finite number of a result's ``metrics`` (BA, ASR,
AUROC, a new defense's own score ...), whatever its name, so a new metric needs no schema change.

Schema versions (``PRAGMA user_version``): 1 kept the metrics as columns of ``cells``; 2 (this one)
has the long table.  A version-1 database is migrated when it is opened.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import numbers
import os
import platform
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from backdoorkit.errors import ConfigError
from backdoorkit.experiment.spec import Cell, Plan, stands_for
from backdoorkit.jsonable import to_jsonable
from backdoorkit.paths import check_writable

if TYPE_CHECKING:
    import pandas

SCHEMA_VERSION = 2
HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 60.0
BUSY_TIMEOUT_MS = 60_000

WELL_KNOWN_METRICS = (
    "ba",
    "asr",
    "asr_quantized",
    "clean_ba",
    "auroc",
    "tpr_at_1fpr",
    "tpr_at_5fpr",
    "iso_precision",
    "iso_recall",
)
"""Metric names every row of :meth:`ResultStore.rows` carries as keys (``None`` when absent)."""
COORDINATES = ("dataset", "model", "attack", "defense", "seed", "clean_fraction")

_SCHEMA = """
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
CREATE TABLE IF NOT EXISTS metrics (
    cell_hash TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (cell_hash, name)
);
"""


T = TypeVar("T")


def _when_unlocked(step: Callable[[], T], path: Path) -> T:
    """Run ``step``, retried while SQLite says the database is locked or busy.

    The busy timeout does not cover every lock: a second process that opens a new database while the
    first is switching it to WAL gets "database is locked" at once (SQLite returns busy without waiting
    where waiting could deadlock).  Two runs on one database hit that at start-up.
    """
    for attempt in range(50):
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            time.sleep(min(0.05 * (attempt + 1), 1.0))
    raise sqlite3.OperationalError(f"{path}: database stayed locked")  # pragma: no cover


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name and the instruction set PyTorch's CPU kernels use (``"AMD EPYC 9B14 /
    AVX512"``).  CPU training is deterministic on one machine but not across instruction sets: a
    borderline backdoor trained twice from the same seed on an AVX2 and an AVX-512 CPU can end tens of
    ASR points apart, so every row says which it ran on."""
    import torch

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} / {torch.backends.cpu.get_cpu_capability()}"


def versions() -> dict[str, str]:
    """Versions recorded with every row, with the CPU (and the GPU where one is visible)."""
    import numpy
    import torch

    import backdoorkit

    out = {
        "backdoorkit": backdoorkit.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
    }
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def _number(value: Any) -> float | None:
    """``value`` as a finite float (numbers, numpy / torch scalars), else ``None``."""
    if not isinstance(value, numbers.Real) and not hasattr(value, "item"):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _migrate_v1(con: sqlite3.Connection) -> None:
    """Version 1 -> 2: the metric columns of ``cells`` move into the long ``metrics`` table."""
    columns = {row[1] for row in con.execute("PRAGMA table_info(cells)")}
    for name in WELL_KNOWN_METRICS:
        if name in columns:
            con.execute(
                f"INSERT OR REPLACE INTO metrics (cell_hash, name, value) "
                f"SELECT cell_hash, ?, {name} FROM cells WHERE {name} IS NOT NULL",
                (name,),
            )
            con.execute(f"ALTER TABLE cells DROP COLUMN {name}")


def check_results_db(path: Path, *, allow_empty: bool = False) -> None:
    """Raise a one-line :class:`ConfigError` unless ``path`` is a results database (read-only: a file
    that is not one is never written to).  ``allow_empty``: an SQLite database without any table also
    passes - the state of a results database another process is creating at this moment (its WAL
    header is written before its schema commits), which the caller is about to create too."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such results database")
    # through SQLite only: closing a plain file handle on the database would drop this process's locks
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = int(con.execute("PRAGMA user_version").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"{path}: not a results database ({exc})") from None
    if allow_empty and not tables:
        return
    if not {"runs", "cells"} <= tables:
        raise ConfigError(f"{path}: not a results database (no cells table)")
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"{path}: results database of schema version {version}; this backdoorkit reads up to "
            f"{SCHEMA_VERSION} (upgrade backdoorkit)"
        )


def check_db_target(path: Path) -> None:
    """Raise a one-line :class:`ConfigError` when a results database cannot be created or written at
    ``path`` (a folder, a place under a file, an unwritable folder or file); nothing is created."""
    if path.is_dir():
        raise ConfigError(f"--db {path}: is a folder, not a results database file")
    check_writable(path, "--db")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultStore:
    """The SQLite results database of one or more experiment runs.

    ``create=False`` opens only an existing results database (checked read-only first, see
    :func:`check_results_db`), for readers such as ``backdoorkit report``.
    """

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path).expanduser()
        if create:
            check_db_target(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_file() and self.path.stat().st_size:
                check_results_db(self.path, allow_empty=True)
        else:
            check_results_db(self.path)
        self._local = threading.local()
        with self.transaction() as con:
            version = int(con.execute("PRAGMA user_version").fetchone()[0])
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            if version < SCHEMA_VERSION:
                _migrate_v1(con)  # a no-op on a new database
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ------------------------------------------------------------------ connections
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = _when_unlocked(lambda: con.execute("PRAGMA journal_mode = WAL").fetchone()[0], self.path)
            if str(mode).lower() != "wal":  # pragma: no cover - filesystems without shared memory
                con.execute("PRAGMA journal_mode = DELETE")
            con.execute("PRAGMA synchronous = NORMAL")
            self._local.con = con
        return con

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE ... COMMIT`` (rolled back on error), retried while the database is locked."""
        con = self._con()
        _when_unlocked(lambda: con.execute("BEGIN IMMEDIATE"), self.path)
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # ------------------------------------------------------------------ runs
    def start_run(self, spec_hash: str, spec_name: str, argv: Sequence[str] = ()) -> str:
        """Record a new run and return its id."""
        run_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        now = time.time()
        with self.transaction() as con:
            con.execute(
                "INSERT INTO runs (run_id, spec_hash, spec_name, host, pid, argv, started_at, heartbeat) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    spec_hash,
                    spec_name,
                    socket.gethostname(),
                    os.getpid(),
                    json.dumps(list(argv)),
                    now,
                    now,
                ),
            )
        return run_id

    def beat(self, run_id: str) -> None:
        with self.transaction() as con:
            con.execute("UPDATE runs SET heartbeat = ? WHERE run_id = ?", (time.time(), run_id))

    def finish_run(self, run_id: str) -> None:
        """Mark the run finished and hand back cells it still holds (they become ``pending``)."""
        with self.transaction() as con:
            con.execute(
                "UPDATE runs SET finished_at = ?, heartbeat = ? WHERE run_id = ?",
                (time.time(), time.time(), run_id),
            )
            con.execute(
                "UPDATE cells SET status = 'pending' WHERE status = 'running' AND run_id = ?", (run_id,)
            )

    def run_alive(self, con: sqlite3.Connection, run_id: str | None) -> bool:
        """Whether the run holding a claim is still working (process alive, heartbeat recent)."""
        if not run_id:
            return False
        row = con.execute(
            "SELECT host, pid, heartbeat, finished_at FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None or row["finished_at"] is not None:
            return False
        fresh = (time.time() - float(row["heartbeat"] or 0)) < STALE_SECONDS
        if row["host"] == socket.gethostname():
            return fresh and _pid_alive(int(row["pid"]))
        return fresh

    @contextmanager
    def heartbeat(self, run_id: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
        """Refresh the run's heartbeat from a background thread while the block runs."""
        stop = threading.Event()

        def loop() -> None:
            store = ResultStore(self.path)  # its own connection: sqlite connections stay in their thread
            try:
                while not stop.wait(every):
                    with contextlib.suppress(sqlite3.Error):  # a busy moment: try again next time
                        store.beat(run_id)
            finally:
                store.close()

        thread = threading.Thread(target=loop, name="backdoorkit-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    # ------------------------------------------------------------------ cells
    def register(self, plan: Plan) -> None:
        """Insert a row for every cell of ``plan`` that has none (pending, or skipped with its reason).

        Rows of the plan are stamped with its spec hash and labels (a cell shared by several specs carries
        the hash and labels of the latest one registered), so ``rows(spec_hash=...)`` gives the cells of a
        spec's latest run and a label renamed in the spec reaches the cells already finished.
        """
        now = time.time()
        with self.transaction() as con:
            for c in plan.runnable:
                self._adopt_equivalent(con, c)
            for c in plan.cells:
                status = "pending" if c.runnable else "skipped"
                con.execute(
                    "INSERT OR IGNORE INTO cells (cell_hash, spec_hash, dataset, model, attack, defense, "
                    "seed, clean_fraction, attack_name, defense_name, defense_kind, scenario, status, cell, "
                    "skip_reason, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        c.hash,
                        plan.spec_hash,
                        c.dataset.label,
                        c.model_label,
                        c.attack_label,
                        c.defense_label,
                        c.seed,
                        c.clean_fraction,
                        c.attack,
                        c.defense,
                        c.defense_kind,
                        c.scenario,
                        status,
                        json.dumps(cell_json(c), sort_keys=True),
                        c.skip_reason,
                        now,
                    ),
                )
                con.execute(  # the latest spec's labels too: renaming a label relabels finished cells
                    "UPDATE cells SET spec_hash = ?, dataset = ?, model = ?, attack = ?, defense = ? "
                    "WHERE cell_hash = ?",
                    (plan.spec_hash, c.dataset.label, c.model_label, c.attack_label, c.defense_label, c.hash),
                )
                if not c.runnable:
                    con.execute(
                        "UPDATE cells SET skip_reason = ? WHERE cell_hash = ? AND status = 'skipped'",
                        (c.skip_reason, c.hash),
                    )
            # a skip recorded earlier (say, for an attack not registered then) whose coordinates now run
            for c in plan.runnable:
                co = c.coordinates()
                con.execute(
                    "DELETE FROM cells WHERE status = 'skipped' AND cell_hash != ? AND dataset = ? "
                    "AND model = ? "
                    "AND attack = ? AND defense = ? AND seed = ? AND clean_fraction = ?",
                    (
                        c.hash,
                        co["dataset"],
                        co["model"],
                        co["attack"],
                        co["defense"],
                        co["seed"],
                        co["clean_fraction"],
                    ),
                )

    @staticmethod
    def _adopt_equivalent(con: sqlite3.Connection, c: Cell) -> None:
        """When ``c`` has no finished row, hand its hash to a finished row of the same coordinates whose
        identity :func:`stands_for` ``c``'s (the metrics follow), so that ``c`` is not run again."""
        row = con.execute("SELECT status FROM cells WHERE cell_hash = ?", (c.hash,)).fetchone()
        if row is not None and row["status"] != "pending":
            return
        co = c.coordinates()
        found = con.execute(
            "SELECT cell_hash, cell FROM cells WHERE status = 'done' AND cell_hash != ? AND dataset = ? "
            "AND model = ? AND attack = ? AND defense = ? AND seed = ? AND clean_fraction = ?",
            (c.hash, *(co[k] for k in ("dataset", "model", "attack", "defense", "seed", "clean_fraction"))),
        ).fetchall()
        identity = c.identity()
        for old in found:
            try:
                before = json.loads(old["cell"])["identity"]
            except (TypeError, ValueError, KeyError):
                continue
            if isinstance(before, dict) and stands_for(before, identity):
                con.execute("DELETE FROM cells WHERE cell_hash = ?", (c.hash,))
                con.execute(
                    "UPDATE cells SET cell_hash = ?, cell = ? WHERE cell_hash = ?",
                    (c.hash, json.dumps(cell_json(c), sort_keys=True), old["cell_hash"]),
                )
                moved = (c.hash, old["cell_hash"])
                con.execute("UPDATE metrics SET cell_hash = ? WHERE cell_hash = ?", moved)
                return

    def statuses(self, hashes: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        con = self._con()
        for i in range(0, len(hashes), 500):
            part = list(hashes[i : i + 500])
            marks = ",".join("?" * len(part))
            for row in con.execute(f"SELECT cell_hash, status FROM cells WHERE cell_hash IN ({marks})", part):
                out[row["cell_hash"]] = row["status"]
        return out

    def reset(self, hashes: Sequence[str]) -> None:
        """Forget the results of these cells (``--force``): they become ``pending`` again."""
        with self.transaction() as con:
            for h in hashes:
                cur = con.execute(
                    "UPDATE cells SET status = 'pending', error = NULL, traceback = NULL, run_id = NULL "
                    "WHERE cell_hash = ? AND status != 'skipped'",
                    (h,),
                )
                if cur.rowcount:
                    con.execute("DELETE FROM metrics WHERE cell_hash = ?", (h,))

    def claim(self, cell_hash: str, run_id: str, *, retry_failed: bool = False) -> bool:
        """Atomically take a cell for ``run_id``; ``False`` if it is done or held by a live run.

        Callers claim runnable cells only: a runnable cell marked ``skipped`` was stopped by the victim
        gate (``min_victim_asr``) and is taken again to check the gate anew.
        """
        with self.transaction() as con:
            row = con.execute("SELECT status, run_id FROM cells WHERE cell_hash = ?", (cell_hash,)).fetchone()
            if row is None:
                return False
            status = row["status"]
            ok = (
                status == "pending"
                or status == "skipped"  # only runnable cells are claimed: one the victim gate stopped
                or (status == "failed" and retry_failed)
                or (
                    status == "running" and row["run_id"] != run_id and not self.run_alive(con, row["run_id"])
                )
            )
            if not ok:
                return False
            con.execute(
                "UPDATE cells SET status = 'running', run_id = ?, attempts = attempts + 1, started_at = ?, "
                "error = NULL, traceback = NULL WHERE cell_hash = ?",
                (run_id, time.time(), cell_hash),
            )
            con.execute("DELETE FROM metrics WHERE cell_hash = ?", (cell_hash,))
            return True

    def metrics_of(self, cell_hash: str) -> dict[str, float]:
        """One cell's stored metrics (empty when it has none)."""
        rows = self._con().execute("SELECT name, value FROM metrics WHERE cell_hash = ?", (cell_hash,))
        return {str(name): float(value) for name, value in rows}

    def release(self, cell_hash: str, run_id: str) -> None:
        """Give a claimed cell back unfinished (it becomes ``pending``)."""
        with self.transaction() as con:
            con.execute(
                "UPDATE cells SET status = 'pending' "
                "WHERE cell_hash = ? AND run_id = ? AND status = 'running'",
                (cell_hash, run_id),
            )

    def finish(self, cell_hash: str, run_id: str, result: dict[str, Any]) -> bool:
        """Write a cell's outcome (``done``, ``failed``, or ``skipped`` by the ``min_victim_asr`` gate with
        its ``skip_reason``); only the run holding the claim can.

        Every finite number in ``result["metrics"]`` is stored under its name (others are dropped);
        the cell's earlier metric rows are replaced.
        """
        given = {str(k): _number(v) for k, v in (result.get("metrics") or {}).items()}
        metrics = {k: v for k, v in given.items() if v is not None}
        values: dict[str, Any] = {
            "status": result["status"],
            "info": json.dumps(to_jsonable(result.get("info", {})), sort_keys=True, allow_nan=False),
            "stage_seconds": json.dumps(to_jsonable(result.get("stages", {})), sort_keys=True),
            "wall_seconds": _number(result.get("seconds")),
            "device": result.get("device"),
            "versions": json.dumps(to_jsonable(result.get("versions") or versions()), sort_keys=True),
            "error": result.get("error"),
            "traceback": result.get("traceback"),
            "skip_reason": result.get("skip_reason"),
            "finished_at": time.time(),
        }
        cols = ", ".join(f"{k} = ?" for k in values)
        with self.transaction() as con:
            cur = con.execute(
                f"UPDATE cells SET {cols} WHERE cell_hash = ? AND run_id = ? AND status = 'running'",
                (*values.values(), cell_hash, run_id),
            )
            if cur.rowcount != 1:
                return False
            con.execute("DELETE FROM metrics WHERE cell_hash = ?", (cell_hash,))
            con.executemany(
                "INSERT INTO metrics (cell_hash, name, value) VALUES (?, ?, ?)",
                [(cell_hash, k, v) for k, v in metrics.items()],
            )
        self.checkpoint()
        return True

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file, so the file alone holds every finished cell.

        Results databases are committed to git and copied while a run is still going; without this the
        finished cells would live only in the ``-wal`` file beside it.  ``PASSIVE`` never waits on readers
        or writers of other processes: a checkpoint they block is completed by the next one.
        """
        with contextlib.suppress(sqlite3.OperationalError):
            self._con().execute("PRAGMA wal_checkpoint(PASSIVE)")

    # ------------------------------------------------------------------ reading
    def _where(self, spec_hash: str | None, status: str | None) -> tuple[str, list[Any]]:
        where, args = [], []
        if spec_hash:
            where.append("c.spec_hash LIKE ?")
            args.append(f"{spec_hash}%")
        if status:
            where.append("c.status = ?")
            args.append(status)
        return (" WHERE " + " AND ".join(where) if where else ""), args

    def rows(self, spec_hash: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """All rows (optionally of one spec / status) as dicts, JSON columns decoded.

        Each row has its ``metrics`` dict and, for the names in :data:`WELL_KNOWN_METRICS`, the value
        (or ``None``) as a key of its own (``row["ba"]``).
        """
        where, args = self._where(spec_hash, status)
        con = self._con()
        metrics: dict[str, dict[str, float]] = {}
        for m in con.execute(
            f"SELECT m.cell_hash, m.name, m.value FROM metrics m JOIN cells c USING (cell_hash){where}", args
        ):
            metrics.setdefault(m["cell_hash"], {})[m["name"]] = float(m["value"])
        out = []
        for row in con.execute(f"SELECT * FROM cells c{where} ORDER BY c.created_at, c.rowid", args):
            d = dict(row)
            for key in ("info", "cell", "stage_seconds", "versions"):
                if d.get(key):
                    with suppress(json.JSONDecodeError):
                        d[key] = json.loads(d[key])
            d["metrics"] = metrics.get(d["cell_hash"], {})
            for name in WELL_KNOWN_METRICS:
                d[name] = d["metrics"].get(name)
            out.append(d)
        return out

    def metrics_frame(self, spec_hash: str | None = None) -> pandas.DataFrame:
        """The metrics as a long :class:`pandas.DataFrame`: one row per cell x metric, with the cell's
        hash, coordinates, defense kind, scenario and status, ``name`` and ``value``."""
        import pandas as pd

        where, args = self._where(spec_hash, None)
        sql = (
            "SELECT c.cell_hash, " + ", ".join(f"c.{k}" for k in COORDINATES) + ", c.defense_kind, "
            "c.scenario, c.status, m.name, m.value FROM metrics m JOIN cells c USING (cell_hash)"
            f"{where} ORDER BY c.created_at, c.rowid, m.name"
        )
        return pd.read_sql_query(sql, self._con(), params=args)

    def counts(self, hashes: Sequence[str] | None = None) -> dict[str, int]:
        con = self._con()
        out: dict[str, int] = {}
        if hashes is None:
            for row in con.execute("SELECT status, COUNT(*) AS n FROM cells GROUP BY status"):
                out[row["status"]] = int(row["n"])
            return out
        for status in self.statuses(hashes).values():
            out[status] = out.get(status, 0) + 1
        return out


def cell_json(cell: Cell) -> dict[str, Any]:
    """The cell's description as stored in the ``cell`` column."""
    return {
        "hash": cell.hash,
        "identity": cell.identity(),
        "dataset": {"name": cell.dataset.name, "label": cell.dataset.label},
        "labels": cell.coordinates(),
        "kind": cell.defense_kind,
        "device": cell.device,
    }
