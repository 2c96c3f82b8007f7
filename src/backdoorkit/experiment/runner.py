"""Run an experiment matrix: ``backdoorkit run spec.yaml [--resume] [--jobs N] [--executor local|ray]``.

The runner expands the spec (:mod:`~backdoorkit.experiment.spec`), records every cell in the results
database (:mod:`~backdoorkit.experiment.store`; skipped combinations with their reason) and computes
the cells it can claim.  Artefacts are cached by content (:mod:`~backdoorkit.experiment.stages`), so
nothing is trained twice, across cells or across runs: the clean model is shared by every cell of the
same dataset x model x seed (x clean fraction), the poisoned set and backdoored model by every defense
of the same dataset x model x attack x seed.

Scheduling: when several cells share an artefact, it gets its own preparation job first, and the
cells that need it wait until it is done; meanwhile other jobs run (``--jobs N`` worker processes or
Ray tasks), so two workers never train the same model.  A failing cell is recorded (error line and
traceback) and the matrix goes on.  Runs are crash-safe: a killed run (even ``kill -9``) loses at most
the cells in progress; ``--resume`` finishes the rest and never redoes a finished cell (failed ones
again only with ``--retry-failed``).  Without ``--resume`` a run refuses a database that already holds
cells of its spec (``--force`` recomputes them, from the artefact cache where possible).
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backdoorkit.cache import ArtifactCache
from backdoorkit.errors import ConfigError, one_line
from backdoorkit.experiment.executors import Executor, make_executor
from backdoorkit.experiment.progress import Progress, describe, status_file
from backdoorkit.experiment.spec import NO_ATTACK, NO_DEFENSE, Cell, Plan, Spec, expand, load_spec
from backdoorkit.experiment.store import ResultStore


@dataclass
class Job:
    """A unit of work: a cell, or a shared artefact (``clean`` model, ``backdoor`` = poison + model)."""

    kind: str
    key: str
    cell: Cell
    deps: list[str] = field(default_factory=list)


@dataclass
class RunSummary:
    """What a run did."""

    db: Path
    spec_hash: str
    planned: int
    skipped: int
    done: int = 0
    failed: int = 0
    already: int = 0
    elsewhere: int = 0
    unselected: int = 0
    gated: int = 0
    """Cells stopped by the spec's ``min_victim_asr`` (recorded ``skipped``, with the victim's numbers)."""
    seconds: float = 0.0
    skips: list[tuple[str, str]] = field(default_factory=list)


def default_db(spec: Spec) -> Path:
    return spec.resolve(spec.db) or Path("runs") / spec.name / "results.db"


def _trunk(cell: Cell) -> str:
    return cell.clean_group() if cell.attack == NO_ATTACK else cell.trunk()


def plan_jobs(cells: list[Cell]) -> list[Job]:
    """Cells in matrix order, each shared artefact needed by two or more cells as a job before them."""
    clean_needs = Counter(c.clean_group() for c in cells if c.clean_model or c.attack == NO_ATTACK)
    trunk_needs = Counter(_trunk(c) for c in cells)
    order: dict[str, list[Cell]] = {}
    for c in cells:
        order.setdefault(_trunk(c), []).append(c)
    jobs: list[Job] = []
    made: set[str] = set()
    for trunk, members in order.items():
        first = members[0]
        group = first.clean_group()
        if clean_needs[group] >= 2 and group not in made:
            jobs.append(Job("clean", group, first))
            made.add(group)
        if trunk_needs[trunk] >= 2 and trunk not in made:
            jobs.append(Job("backdoor", trunk, first))
            made.add(trunk)
        for c in members:
            deps = [
                k
                for k in {c.clean_group() if (c.clean_model or c.attack == NO_ATTACK) else None, _trunk(c)}
                if k in made
            ]
            jobs.append(Job("cell", c.hash, c, sorted(deps)))
    return jobs


def describe_prep(job: Job) -> str:
    c = job.cell
    what = "clean model" if job.kind == "clean" or c.attack == NO_ATTACK else f"{c.attack_label} model"
    return f"{what} {c.dataset.label} {c.model_label} seed {c.seed}"


def _failed_result(error: BaseException) -> dict[str, Any]:
    import traceback

    return {
        "status": "failed",
        "error": one_line(error),
        "traceback": "".join(traceback.format_exception(error)),
        "seconds": 0.0,
        "stages": {},
    }


class Scheduler:
    """Dispatches jobs whose dependencies are done, claims cells, records results."""

    def __init__(
        self,
        jobs: list[Job],
        *,
        store: ResultStore,
        run_id: str,
        executor: Executor,
        cache_root: Path,
        progress: Progress,
        retry_failed: bool,
        epoch_lines: float | None = None,
        read_only: list[str] | None = None,
        status_dir: Path | None = None,
    ) -> None:
        self.waiting = list(jobs)
        self.store = store
        self.run_id = run_id
        self.executor = executor
        self.cache_root = str(cache_root)
        self.progress = progress
        self.retry_failed = retry_failed
        self.epoch_lines = epoch_lines
        self.read_only = read_only or []
        self.status_dir = status_dir
        self.finished: set[str] = set()
        self.inflight: dict[Future, Job] = {}
        self.done = 0
        self.failed = 0
        self.gated = 0
        self.elsewhere = 0

    def _next_ready(self) -> Job | None:
        for job in self.waiting:
            if all(d in self.finished for d in job.deps):
                self.waiting.remove(job)
                return job
        return None

    def _payload(self, job: Job) -> dict[str, Any]:
        payload: dict[str, Any] = {"kind": job.kind, "cell": job.cell, "cache": self.cache_root}
        if self.read_only:
            payload["read_only"] = self.read_only
        status = str(self._status(job)) if self.status_dir is not None else None
        if self.epoch_lines or status:
            label = describe(job.cell) if job.kind == "cell" else describe_prep(job)
            payload["epoch_lines"] = {"label": label, "every": self.epoch_lines or None, "status": status}
        return payload

    def _status(self, job: Job) -> Path:
        assert self.status_dir is not None
        return status_file(self.status_dir, job.cell.hash if job.kind == "cell" else job.key)

    def _record(self, job: Job, result: dict[str, Any]) -> None:
        self.finished.add(job.key)
        if self.status_dir is not None:
            self._status(job).unlink(missing_ok=True)
        if job.kind != "cell":
            self.progress.prepared(job.key, result)
            return
        self.store.finish(job.cell.hash, self.run_id, result)
        if result.get("status") == "done":
            self.done += 1
        elif result.get("status") == "skipped":
            self.gated += 1
        else:
            self.failed += 1
        self.progress.finished(job.cell, result)

    def run(self) -> None:
        try:
            while self.waiting or self.inflight:
                while len(self.inflight) < self.executor.slots:
                    job = self._next_ready()
                    if job is None:
                        break
                    if job.kind == "cell":
                        if not self.store.claim(job.cell.hash, self.run_id, retry_failed=self.retry_failed):
                            self.finished.add(job.key)
                            self.elsewhere += 1
                            self.progress.taken_elsewhere()
                            continue
                        self.progress.started(job.cell.hash, describe(job.cell))
                    else:
                        self.progress.started(job.key, describe_prep(job), prep=True)
                    try:
                        fut = self.executor.submit(self._payload(job))
                    except Exception as exc:  # the executor itself failed (broken pool ...)
                        self._record(job, _failed_result(exc))
                        continue
                    self.inflight[fut] = job
                if not self.inflight:
                    if self.waiting:  # dependencies that can never finish (should not happen)
                        for job in self.waiting:
                            self.finished.add(job.key)
                        continue
                    break
                done, _ = wait(list(self.inflight), timeout=1.0, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = self.inflight.pop(fut)
                    try:
                        result = fut.result()
                    except Exception as exc:  # a worker died (killed, out of memory ...)
                        result = _failed_result(exc)
                        result["error"] = f"worker failed: {result['error']}"
                    self._record(job, result)
        finally:
            for fut, job in list(self.inflight.items()):
                fut.cancel()
                if job.kind == "cell":
                    self.store.release(job.cell.hash, self.run_id)


def run_experiment(
    spec: Spec | str | Path,
    *,
    db: str | Path | None = None,
    resume: bool = False,
    retry_failed: bool = False,
    force: bool = False,
    jobs: int = 1,
    executor: str = "local",
    quiet: bool = False,
    live: bool | None = None,
    cache_dir: str | Path | None = None,
    argv: list[str] | None = None,
    only: list[str] | None = None,
    epoch_lines: float | None = None,
) -> RunSummary:
    """Run (or resume) the matrix of ``spec``; returns a :class:`RunSummary`.

    ``epoch_lines``: seconds between the epoch lines every training of a job writes to stderr
    (:mod:`backdoorkit.train_report`); 0 for none; ``None``: 300 when the progress is written line by
    line (not quiet, no live terminal view), none otherwise.

    ``only``: ``KEY=VALUE`` filters (see :func:`select_cells`); the cells they leave out stay as they
    are in the database (pending, done ...) for a later run.
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: need at least one job")
    if epoch_lines is not None and epoch_lines < 0:
        raise ConfigError(f"--epoch-lines {epoch_lines:g}: need seconds >= 0 (0 for none)")
    for folder in spec.read_only_caches:
        if not (spec.resolve(folder) or Path(folder)).is_dir():
            raise ConfigError(f"read_only_caches: {spec.resolve(folder)} is not a folder")
    plan = expand(spec)
    preflight(plan, executor)
    chosen = {c.hash for c in (select_cells(plan.runnable, only) if only else plan.runnable)}
    db_path = Path(db).expanduser() if db is not None else default_db(spec)
    cache_root = (
        Path(cache_dir).expanduser()
        if cache_dir is not None
        else (spec.resolve(spec.cache_dir) or ArtifactCache().root)
    )
    store = ResultStore(db_path)
    store.register(plan)
    runnable = plan.runnable
    statuses = store.statuses([c.hash for c in runnable])
    present = Counter(s for s in statuses.values() if s != "pending")
    if present and not (resume or force):
        what = ", ".join(f"{n} {s}" for s, n in sorted(present.items()))
        raise ConfigError(
            f"{db_path}: {sum(present.values())} of the {len(runnable)} cells of this spec are "
            "already in the "
            f"database ({what}); pass --resume to finish the rest or --force to recompute them"
        )
    if force:  # only what is selected is recomputed
        store.reset([c.hash for c in runnable if c.hash in chosen])
        statuses = store.statuses([c.hash for c in runnable])
    unfinished = [
        c
        for c in runnable
        # "skipped" for a runnable cell: the victim gate stopped it; check the gate again
        if statuses.get(c.hash) in ("pending", "running", "skipped")
        or (retry_failed and statuses.get(c.hash) == "failed")
    ]
    already = len(runnable) - len(unfinished)
    todo = [c for c in unfinished if c.hash in chosen]
    unselected = len(unfinished) - len(todo)
    summary = RunSummary(
        db_path,
        plan.spec_hash,
        len(runnable),
        len(plan.skipped),
        already=already,
        skips=[(describe(c), c.skip_reason or "") for c in plan.skipped],
        unselected=unselected,
    )
    start = time.perf_counter()
    run_id = store.start_run(plan.spec_hash, spec.name, argv or [])
    ex: Executor | None = None
    try:
        with store.heartbeat(run_id):
            todo, summary.gated = _gate_from_records(todo, plan.runnable, store, run_id, quiet=quiet)
            if not todo:
                return summary
            ex = make_executor(executor, jobs, spec.ray)
            view = Progress(
                len(todo), slots=ex.slots, quiet=quiet, live=live, skipped=len(plan.skipped), already=already
            )
            with view as progress, tempfile.TemporaryDirectory(prefix="backdoorkit-progress-") as status:
                # the live view shows each running job's latest epoch, written by whichever local process
                # runs it (a Ray task may run on another machine)
                local = progress.live_enabled and ex.name == "local"
                progress.status_dir = Path(status) if local else None
                sched = Scheduler(
                    plan_jobs(todo),
                    store=store,
                    run_id=run_id,
                    executor=ex,
                    cache_root=cache_root,
                    progress=progress,
                    retry_failed=retry_failed,
                    epoch_lines=_epoch_lines(epoch_lines, progress),
                    read_only=[str(spec.resolve(p)) for p in spec.read_only_caches],
                    status_dir=progress.status_dir,
                )
                sched.run()
            summary.done, summary.failed, summary.elsewhere = sched.done, sched.failed, sched.elsewhere
            summary.gated += sched.gated
    finally:
        if ex is not None:
            ex.shutdown()
        store.finish_run(run_id)
        summary.seconds = time.perf_counter() - start
        store.close()
    return summary


def _gate_from_records(
    todo: list[Cell], runnable: list[Cell], store: ResultStore, run_id: str, *, quiet: bool
) -> tuple[list[Cell], int]:
    """Apply the ``min_victim_asr`` gate from the database where it can: a gated cell whose victim's
    ``none`` cell (same trunk: data, model, training, attack, seed) is done with an ASR below the gate is
    recorded ``skipped`` now, with the same reason the worker would give, and leaves ``todo``.  So no
    victim is trained or loaded only to be found not implanting again (hours at full width on a machine
    whose cache lacks it).  The rest is gated by the worker, as before.  Returns ``(todo, gated)``."""
    from backdoorkit.experiment.stages import GATED_KINDS, gate_reason

    nones = {c.trunk(): c for c in runnable if c.defense == NO_DEFENSE and c.attack != NO_ATTACK}
    gated = [
        c
        for c in todo
        if c.min_victim_asr is not None and c.defense_kind in GATED_KINDS and c.trunk() in nones
    ]
    done = store.statuses([nones[c.trunk()].hash for c in gated])
    stopped: set[str] = set()
    for cell in gated:
        none, gate = nones[cell.trunk()], cell.min_victim_asr
        assert gate is not None
        victim = store.metrics_of(none.hash) if done.get(none.hash) == "done" else {}
        if "asr" not in victim or "ba" not in victim or victim["asr"] >= gate:
            continue
        if not store.claim(cell.hash, run_id):
            continue
        reason = gate_reason(victim["ba"], victim["asr"], gate)
        info = {"gated_by": none.hash}  # the no-defense cell whose record stopped it
        store.finish(
            cell.hash, run_id, {"status": "skipped", "skip_reason": reason, "seconds": 0.0, "info": info}
        )
        stopped.add(cell.hash)
        if not quiet:
            print(f"[gate] {describe(cell)}: skipped: {reason}", file=sys.stderr, flush=True)
    return [c for c in todo if c.hash not in stopped], len(stopped)


def _epoch_lines(asked: float | None, progress: Progress) -> float | None:
    """Seconds between epoch lines (``None``: none): as asked, else on when progress is line by line."""
    from backdoorkit.train_report import DEFAULT_EVERY

    if asked is not None:
        return asked or None
    return None if progress.quiet or progress.live_enabled else DEFAULT_EVERY


SELECT_KEYS = ("dataset", "model", "attack", "defense", "seed")
"""What ``--only`` can select on."""


def select_cells(cells: list[Cell], only: list[str]) -> list[Cell]:
    """The cells matching every ``KEY=VALUE`` of ``only`` (a key given twice matches either value).

    ``KEY`` is one of :data:`SELECT_KEYS`; ``VALUE`` is the row's label in the report or the registered
    name (``attack=BadNets`` and ``attack=badnets`` both work; ``none`` is the no-attack / no-defense
    row).  A filter that names an unknown key, or that matches no cell, is a :class:`ConfigError`
    naming what there is.
    """
    wanted: dict[str, set[str]] = {}
    for item in only:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or not value.strip() or key not in SELECT_KEYS:
            raise ConfigError(f"--only {item}: expected KEY=VALUE with KEY one of {', '.join(SELECT_KEYS)}")
        wanted.setdefault(key, set()).add(value.strip().lower())

    def names(cell: Cell, key: str) -> set[str]:
        out = {str(cell.coordinates()[key])}
        if key in ("attack", "defense"):
            out.add(getattr(cell, key))
        elif key == "model":
            out.add(str(cell.model.get("arch")))
        return {n.lower() for n in out}

    chosen = [c for c in cells if all(names(c, k) & v for k, v in wanted.items())]
    if not chosen:
        have = {k: sorted({str(c.coordinates()[k]) for c in cells}) for k in wanted}
        what = "; ".join(f"{k}: {', '.join(v)}" for k, v in have.items())
        raise ConfigError(f"--only {' '.join(only)} matches none of the {len(cells)} cells ({what})")
    return chosen


def preflight(plan: Plan, executor: str = "local") -> None:
    """Refuse, before the first cell runs, what would make cells fail: no runnable cell, a device this
    machine lacks (local executor), a model that cannot be built (arguments out of bounds, too many
    parameters: built on the meta device, nothing allocated), a target out of range for a dataset.

    Raises:
        ConfigError: one line, ``spec: ...``.
    """
    from backdoorkit.device import check_device

    if not plan.cells:
        raise ConfigError("spec: the matrix has no cells")
    if not plan.runnable:
        raise ConfigError(f"spec: every cell of the matrix is skipped ({plan.skipped[0].skip_reason})")
    if executor == "local":
        try:
            check_device(plan.spec.device)
        except ConfigError as exc:
            raise ConfigError(f"spec: {exc}") from None
    seen: set[str] = set()
    for cell in plan.runnable:
        key = describe_model(cell)
        if key not in seen:
            seen.add(key)
            _check_buildable(cell)
    _check_targets(plan.runnable)


def describe_model(cell: Cell) -> str:
    import json

    return json.dumps(cell.model, sort_keys=True, default=str)


def _check_buildable(cell: Cell) -> None:
    import torch

    from backdoorkit.models.registry import build_model, model_args

    model = cell.model
    kwargs = dict(model.get("kwargs") or {})
    if model.get("width") is not None:
        kwargs["width"] = model["width"]
    if "image_size" in model_args(model["arch"]) and "image_size" not in kwargs:
        kwargs["image_size"] = cell.dataset.image_size or _test_split(cell).image_shape[1]
    try:
        with torch.device("meta"):
            build_model(model["arch"], **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"spec: models: {cell.model_label}: {exc}") from None


def _check_targets(cells: list[Cell]) -> None:
    """Targets against each dataset's number of classes (datasets are loaded only when some target is
    at least 2, the fewest classes a dataset has)."""
    by_dataset: dict[str, tuple[Cell, int]] = {}
    for c in cells:
        target = c.attack_params.get("target") if c.attack != NO_ATTACK else None
        if isinstance(target, int) and target >= 2 and c.attack_params.get("mode", "all2one") != "all2all":
            top = by_dataset.get(c.dataset.identity)
            if top is None or target > top[1]:
                by_dataset[c.dataset.identity] = (c, target)
    for cell, target in by_dataset.values():
        ref = cell.dataset
        test = _test_split(cell)
        if target >= test.num_classes:
            raise ConfigError(
                f"spec: attacks: {cell.attack_label}: target {target} is out of range for "
                f"{ref.label} ({test.num_classes} classes: 0 to {test.num_classes - 1})"
            )


@functools.lru_cache(maxsize=8)
def _test_split_of(name: str, data_root: str | None, image_size: int | None, identity: str) -> Any:
    from backdoorkit.data import load_dataset

    return load_dataset(name, "test", data_root, image_size=image_size)


def _test_split(cell: Cell) -> Any:
    """The test split of a cell's dataset (its class count and image size), loaded once per run."""
    ref = cell.dataset
    return _test_split_of(ref.name, ref.data_root, ref.image_size, ref.identity)


def plan_of(spec: Spec | str | Path) -> Plan:
    """The expanded matrix of a spec (no database, nothing run)."""
    return expand(spec if isinstance(spec, Spec) else load_spec(spec))
