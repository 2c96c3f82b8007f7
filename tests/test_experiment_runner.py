"""The experiment runner: caching, scenario skips, failing cells, crash + resume, concurrent runs, executors.

Budgets are tiny (ResNet-18 width 4, one epoch, 300 digits training images, 100 test images): these
tests check the machinery, not the numbers.  Toy defenses of the four kinds are registered for the
in-process tests only and removed afterwards.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from backdoorkit.data import ImageSet
from backdoorkit.defenses import DEFENSES, register_defense
from backdoorkit.defenses.base import (
    DefenseParams,
    DefenseResult,
    InputDetector,
    ModelInspector,
    ModelRepair,
    RobustTraining,
    Verdict,
)
from backdoorkit.experiment.report import build_table, load_rows, to_markdown, write_report
from backdoorkit.experiment.runner import plan_of, run_experiment
from backdoorkit.experiment.store import ResultStore
from backdoorkit.pipeline import recipe_for
from backdoorkit.train import fit, fit_calls, parameters_of

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------- toy defenses
class StepParams(DefenseParams):
    steps: int = 2


class ToyRepair(ModelRepair):
    """Toy repair: a few steps of head fine-tuning; records a skip scan."""

    name = "_toy_repair"
    Params = StepParams

    def _repair(self, model: nn.Module, clean: ImageSet, *, seed: int, device: str) -> DefenseResult:
        cfg = recipe_for(clean, seed=seed, device=device, batch_size=32)
        fit(model, clean, cfg, trainable=parameters_of(model, "fc"), steps=self.params.steps)
        scan = [
            {"skip": s, "gamma": g, "ba": 0.9, "asr": g}
            for s in ("layer1.0", "layer2.0")
            for g in (1.0, 0.5, 0.0)
        ]
        return DefenseResult(model, {"scan": scan, "layers": ["layer1.0"], "holdout": len(clean)})


class ToyTraining(RobustTraining):
    """Toy robust training: a short training run; "isolates" the first ten rows."""

    name = "_toy_training"
    Params = StepParams

    def _train(
        self, untrusted: ImageSet, holdout: ImageSet | None, *, model_factory: Any, config: Any, seed: int
    ) -> DefenseResult:
        model = model_factory()
        fit(model, untrusted, config, steps=self.params.steps)
        return DefenseResult(model, {"had_holdout": holdout is not None}, isolated=torch.arange(10))


class ToyDetector(InputDetector):
    """Toy detector: mean brightness, threshold at the clean 95th percentile."""

    name = "_toy_detector"

    def fit(self, model: nn.Module, clean: ImageSet, *, seed: int = 0) -> ToyDetector:
        self.threshold = float(torch.quantile(self.score(clean.pixels()), 0.95))
        return self

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).mean(1)


class ToyInspector(ModelInspector):
    """Toy inspector: always says infected, target 0."""

    name = "_toy_inspector"

    def inspect(self, model: nn.Module, clean: ImageSet, *, seed: int = 0) -> Verdict:
        return Verdict(True, 0, scores={"anomaly": 3.0})


TOYS = (ToyRepair, ToyTraining, ToyDetector, ToyInspector)
TOY_NAMES = [t.name for t in TOYS]


@pytest.fixture(scope="module")
def toys() -> Iterator[list[str]]:
    for cls in TOYS:
        register_defense(cls)
    try:
        yield TOY_NAMES
    finally:
        for name in TOY_NAMES:
            DEFENSES._entries.pop(name, None)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("experiment-cache")


def tiny(tmp_path: Path, name: str = "spec.yaml", **kw: Any) -> Path:
    spec: dict[str, Any] = {
        "name": "tiny",
        "datasets": [{"name": "digits", "subset": 300, "test_subset": 100}],
        "models": [{"arch": "resnet18", "width": 4}],
        "train": {"epochs": 1, "batch_size": 64},
        "attacks": ["badnets"],
        "defenses": ["none"],
        "seeds": [0],
        "clean_fraction": 0.1,
        "device": "cpu",
    }
    spec.update(kw)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def rows(db: Path) -> list[dict[str, Any]]:
    store = ResultStore(db)
    try:
        return store.rows()
    finally:
        store.close()


# ---------------------------------------------------------------------------------------- in-process
def test_every_kind_runs_and_a_second_run_trains_nothing(tmp_path: Path, toys: list[str]) -> None:
    spec = tiny(tmp_path, defenses=["none", *toys])
    cache = tmp_path / "cache"
    before = fit_calls()
    first = run_experiment(spec, db=tmp_path / "a.db", cache_dir=cache, quiet=True)
    assert (first.done, first.failed, first.skipped) == (5, 0, 0)
    # one clean model, one backdoored model, one repair, one robust training: nothing trained twice
    assert fit_calls() - before == 4
    before = fit_calls()
    second = run_experiment(spec, db=tmp_path / "b.db", cache_dir=cache, quiet=True)
    assert second.done == 5
    assert fit_calls() - before == 0

    a = {r["cell_hash"]: r for r in rows(tmp_path / "a.db")}
    b = {r["cell_hash"]: r for r in rows(tmp_path / "b.db")}
    assert a.keys() == b.keys()
    for h, r in a.items():
        assert r["status"] == "done" and r["attempts"] == 1
        assert (r["ba"], r["asr"]) == (b[h]["ba"], b[h]["asr"])
        assert r["versions"]["torch"] == torch.__version__ and r["device"] == "cpu"
        assert r["versions"]["cpu"].endswith(torch.backends.cpu.get_cpu_capability())
        assert "backdoor_model" in b[h]["stage_seconds"]["cached"]
    by_defense = {r["defense"]: r for r in a.values()}
    assert by_defense["_toy_repair"]["info"]["scan"][0]["skip"] == "layer1.0"
    assert (
        by_defense["_toy_training"]["scenario"] == "S2" and by_defense["_toy_training"]["info"]["had_holdout"]
    )
    assert by_defense["_toy_training"]["iso_recall"] is not None
    assert by_defense["_toy_training"]["info"]["isolated_count"] == 10
    assert 0.0 <= by_defense["_toy_detector"]["auroc"] <= 1.0
    assert by_defense["_toy_detector"]["info"]["threshold"] is not None
    assert by_defense["_toy_inspector"]["info"]["verdict"]["infected"] is True
    assert by_defense["_toy_inspector"]["info"]["target_correct"] is True
    assert all(r["clean_ba"] is not None for r in a.values())

    out = write_report(tmp_path / "a.db", tmp_path / "report", formats=("md", "csv", "latex"))
    md = out["md"].read_text()
    for part in ("## Detection", "## Isolation", "## Inspection", "| _toy_repair |", "(clean model)"):
        assert part in md
    assert any(p.name.startswith("scan_") and "toy_repair" in p.name for p in out.values())
    assert any(p.name.startswith("bars_") for p in out.values())

    # a defense whose computation changed bumps its revision: the cache no longer answers for it
    def verdict_scores(db: Path) -> dict[str, float]:
        return {r["defense"]: r for r in rows(db)}["_toy_inspector"]["info"]["verdict"]["scores"]

    old_inspect = ToyInspector.inspect
    ToyInspector.inspect = lambda self, model, clean, *, seed=0: Verdict(True, 0, scores={"anomaly": 4.0})
    try:
        run_experiment(spec, db=tmp_path / "c.db", cache_dir=cache, quiet=True)
        assert verdict_scores(tmp_path / "c.db") == {"anomaly": 3.0}  # the cached verdict
        ToyInspector.revision = 1
        run_experiment(spec, db=tmp_path / "d.db", cache_dir=cache, quiet=True)
        assert verdict_scores(tmp_path / "d.db") == {"anomaly": 4.0}
    finally:
        ToyInspector.inspect, ToyInspector.revision = old_inspect, 0


def test_forbidden_scenarios_are_skipped_with_their_reason(
    tmp_path: Path, toys: list[str], shared_cache: Path
) -> None:
    only_s1 = plan_of(
        tiny(
            tmp_path,
            "a.yaml",
            scenarios=["S1"],
            defenses=[
                "none",
                "_toy_repair",
                "_toy_training",
                {"name": "_toy_training", "scenario": "S1", "label": "rt-in-s1"},
            ],
        )
    )
    why = {c.defense_label: c.skip_reason for c in only_s1.cells}
    assert why["none"] is None and why["_toy_repair"] is None
    assert "offers only S1" in why["_toy_training"]
    assert "asked to run in S1" in why["rt-in-s1"]
    no_clean = plan_of(
        tiny(tmp_path, "b.yaml", clean_fraction=0.0, defenses=["none", "_toy_repair", "_toy_training"])
    )
    by = {c.defense: c for c in no_clean.cells}
    assert "clean_fraction is 0" in by["_toy_repair"].skip_reason
    assert by["_toy_training"].runnable and by["_toy_training"].scenario == "S3"

    summary = run_experiment(tmp_path / "a.yaml", db=tmp_path / "r.db", cache_dir=shared_cache, quiet=True)
    assert (summary.done, summary.skipped) == (2, 2)
    status = {r["defense"]: (r["status"], r["skip_reason"]) for r in rows(tmp_path / "r.db")}
    assert status["rt-in-s1"][0] == "skipped" and "asked to run in S1" in status["rt-in-s1"][1]
    md = to_markdown(build_table(load_rows(tmp_path / "r.db")))
    assert "## Skipped combinations" in md and "offers only S1" in md


def test_the_victim_gate_skips_repairs_of_a_victim_without_a_backdoor(
    tmp_path: Path, toys: list[str], shared_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``min_victim_asr``: repair and training cells of a victim whose no-defense ASR is below the gate are
    recorded ``skipped`` with the victim's numbers (detectors still run); ``--resume`` checks anew."""
    defenses = ["none", "_toy_repair", "_toy_detector"]
    db = tmp_path / "g.db"
    run_experiment(tiny(tmp_path, defenses=defenses), db=db, cache_dir=shared_cache, quiet=True)
    asr = next(r["asr"] for r in rows(db) if r["defense"] == "none")
    assert asr < 0.99  # one epoch at width 4: the tiny victim does not implant fully
    gate = round(asr + 0.01, 4)
    db2 = tmp_path / "g2.db"
    import backdoorkit.metrics as metrics_module
    from backdoorkit.experiment import stages

    scored = []  # the victim scores the runner computes (a detector's evaluation scores its model too)
    score = metrics_module.backdoor_metrics

    def counted(*args: object) -> object:
        scored.append(sys._getframe(1).f_code.co_name)
        return score(*args)

    monkeypatch.setattr(metrics_module, "backdoor_metrics", counted)
    stages._VICTIM_SCORES.clear()
    summary = run_experiment(
        tiny(tmp_path, "gated.yaml", defenses=defenses, min_victim_asr=gate),
        db=db2,
        cache_dir=shared_cache,
        quiet=True,
    )
    assert (summary.done, summary.gated, summary.failed) == (2, 1, 0)
    assert scored.count("_victim_score") == 1  # the none cell and the gate score the victim once
    status = {r["defense"]: (r["status"], r["skip_reason"]) for r in rows(db2)}
    assert status["_toy_detector"][0] == "done" and status["none"][0] == "done"
    state, why = status["_toy_repair"]
    assert state == "skipped" and "does not implant" in why and f"ASR {100 * asr:.1f}" in why, why
    md = to_markdown(build_table(load_rows(db2)))
    assert "## Skipped combinations" in md and "min_victim_asr" in md
    # a lower gate, resumed: the gated cell runs now; the finished ones stay
    summary = run_experiment(
        tiny(tmp_path, "gated.yaml", defenses=defenses, min_victim_asr=max(0.0, asr - 0.01)),
        db=db2,
        cache_dir=shared_cache,
        quiet=True,
        resume=True,
    )
    assert (summary.done, summary.gated, summary.already) == (1, 0, 2)
    assert {r["status"] for r in rows(db2)} == {"done"}


def test_a_failing_cell_is_recorded_and_the_matrix_goes_on(tmp_path: Path, shared_cache: Path) -> None:
    from backdoorkit.cli import main

    spec = tiny(
        tmp_path, attacks=[{"name": "badnets", "params": {"row": 40}, "label": "off-image"}, "badnets"]
    )
    summary = run_experiment(spec, db=tmp_path / "r.db", cache_dir=shared_cache, quiet=True)
    assert (summary.done, summary.failed) == (1, 1)
    by = {r["attack"]: r for r in rows(tmp_path / "r.db")}
    bad = by["off-image"]
    assert bad["status"] == "failed" and bad["error"].startswith("ConfigError: badnets:")
    assert "\n" not in bad["error"] and "Traceback" in bad["traceback"]
    assert by["badnets"]["status"] == "done"
    # without --resume the database is refused; --resume does not retry failures; --retry-failed does
    with pytest.raises(SystemExit) as exc:
        main(["run", str(spec), "--db", str(tmp_path / "r.db"), "--cache-dir", str(shared_cache), "--quiet"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "run",
                str(spec),
                "--db",
                str(tmp_path / "r.db"),
                "--cache-dir",
                str(shared_cache),
                "--quiet",
                "--resume",
                "--retry-failed",
            ]
        )
    assert exc.value.code == 1
    by = {r["attack"]: r for r in rows(tmp_path / "r.db")}
    assert by["off-image"]["attempts"] == 2 and by["badnets"]["attempts"] == 1
    assert "off-image" in to_markdown(build_table(load_rows(tmp_path / "r.db")))


def test_only_runs_the_selected_cells_and_leaves_the_rest_pending(
    tmp_path: Path, shared_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    from backdoorkit.cli import main

    spec = tiny(
        tmp_path, attacks=["none", {"name": "badnets", "label": "BadNets"}], defenses=["none", "ft_fc"]
    )
    db = tmp_path / "o.db"
    summary = run_experiment(
        spec, db=db, cache_dir=shared_cache, quiet=True, only=["attack=badnets", "defense=none"]
    )
    assert (summary.done, summary.unselected) == (1, 3)
    status = {(r["attack"], r["defense"]): r["status"] for r in rows(db)}
    assert status == {
        ("BadNets", "none"): "done",
        ("BadNets", "ft_fc"): "pending",
        ("none", "none"): "pending",
        ("none", "ft_fc"): "pending",
    }
    # --force with --only recomputes the selection only; the same key twice widens it
    summary = run_experiment(
        spec, db=db, cache_dir=shared_cache, quiet=True, force=True, only=["defense=ft_fc", "attack=BadNets"]
    )
    assert (summary.done, summary.unselected) == (1, 2)
    assert {r["attempts"] for r in rows(db) if r["defense"] == "none" and r["attack"] == "BadNets"} == {1}
    summary = run_experiment(
        spec, db=db, cache_dir=shared_cache, quiet=True, resume=True, only=["attack=none", "attack=BadNets"]
    )
    assert (summary.done, summary.unselected) == (2, 0)
    # bad filters: one line, exit 2, before anything runs
    for bad in ("attack=WaNet", "colour=red", "attack"):
        with pytest.raises(SystemExit) as exc:
            main(["run", str(spec), "--db", str(db), "--resume", "--quiet", "--only", bad])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and "--only" in err, err
    assert "BadNets" in err or "KEY=VALUE" in err


def test_worker_processes(tmp_path: Path, shared_cache: Path) -> None:
    spec = tiny(tmp_path, attacks=[{"name": "badnets", "params": {"size": [2, 3]}}])
    summary = run_experiment(spec, db=tmp_path / "r.db", cache_dir=shared_cache, quiet=True, jobs=2)
    assert (summary.done, summary.failed) == (2, 0)
    assert all(r["status"] == "done" and r["ba"] is not None for r in rows(tmp_path / "r.db"))


def test_ray_executor(tmp_path: Path, shared_cache: Path) -> None:
    import ray  # a dev dependency: the distributed path runs on every CI run

    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        spec = tiny(tmp_path, ray={"num_cpus": 1})
        summary = run_experiment(
            spec, db=tmp_path / "r.db", cache_dir=shared_cache, quiet=True, executor="ray"
        )
        assert (summary.done, summary.failed) == (1, 0)
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------- subprocesses
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from backdoorkit.cli import main; main(sys.argv[1:])", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _done(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(str(db), timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM cells WHERE status = 'done'").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_resume_after_sigkill_finishes_every_cell_once(tmp_path: Path, shared_cache: Path) -> None:
    spec = tiny(tmp_path, attacks=[{"name": "badnets", "params": {"size": [2, 3]}}], seeds=[5, 6])
    db, cache = tmp_path / "r.db", shared_cache
    proc = subprocess.Popen(
        _cli("run", str(spec), "--db", str(db), "--cache-dir", str(cache), "--quiet"),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while _done(db) < 1:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no cell finished in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()  # reap it: a zombie would still look alive
    before = {r["cell_hash"]: r for r in rows(db)}
    finished = {h: r["finished_at"] for h, r in before.items() if r["status"] == "done"}
    assert len(before) == 4 and 1 <= len(finished) < 4  # killed mid-matrix

    summary = run_experiment(spec, db=db, cache_dir=cache, quiet=True, resume=True)
    after = {r["cell_hash"]: r for r in rows(db)}
    assert len(after) == 4 and all(r["status"] == "done" for r in after.values())
    assert summary.done == 4 - len(finished) and summary.already == len(finished)
    for h, t in finished.items():  # finished cells were not redone
        assert after[h]["finished_at"] == t and after[h]["attempts"] == 1
    interrupted = [h for h, r in before.items() if r["status"] == "running"]
    assert len(interrupted) <= 1
    for h in interrupted:
        assert after[h]["attempts"] == 2
    con = sqlite3.connect(str(db))
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(DISTINCT cell_hash) FROM cells").fetchone()[0] == 4
    con.close()


def test_two_runs_on_one_database(tmp_path: Path, shared_cache: Path) -> None:
    # the matrix of the crash test: its artefacts are cached, so the two runs race on the database
    spec = tiny(tmp_path, attacks=[{"name": "badnets", "params": {"size": [2, 3]}}], seeds=[5, 6])
    db = tmp_path / "r.db"
    cmd = _cli("run", str(spec), "--db", str(db), "--cache-dir", str(shared_cache), "--quiet", "--resume")
    procs = [
        subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()
    result = rows(db)
    assert len(result) == 4 and len({r["cell_hash"] for r in result}) == 4
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in result)
    con = sqlite3.connect(str(db))
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
    assert con.execute("SELECT COUNT(*) FROM runs WHERE finished_at IS NULL").fetchone()[0] == 0
    con.close()


def test_a_parameter_added_at_its_default_keeps_finished_cells(tmp_path: Path, shared_cache: Path) -> None:
    """A method that gains a parameter whose default keeps its old behaviour (Blended's ``clean_label``)
    changes the hash of every cell that uses it; the finished cells must not run again.  Here the
    stored cell is rewritten as a run from before the parameter existed would have left it."""
    from backdoorkit.experiment.spec import stands_for

    spec = tiny(tmp_path, attacks=[{"name": "blended", "label": "Blend"}])
    db = tmp_path / "added.db"
    assert run_experiment(spec, db=db, cache_dir=shared_cache, quiet=True).done == 1
    (before,) = rows(db)
    con = sqlite3.connect(db)
    (text,) = con.execute("SELECT cell FROM cells").fetchone()
    cell = json.loads(text)
    assert cell["identity"]["attack"]["params"].pop("clean_label") is False
    with con:
        con.execute("UPDATE cells SET cell_hash = 'old', cell = ?", (json.dumps(cell),))
        con.execute("UPDATE metrics SET cell_hash = 'old'")
    con.close()

    summary = run_experiment(spec, db=db, cache_dir=shared_cache, quiet=True, resume=True)
    assert (summary.done, summary.already) == (0, 1)
    (after,) = rows(db)
    assert after["cell_hash"] == before["cell_hash"] and after["status"] == "done"
    assert (after["ba"], after["asr"]) == (before["ba"], before["asr"])

    # a value that differs, or a new parameter away from its default, is a different cell
    old = cell["identity"]
    new = copy.deepcopy(old)
    new["attack"]["params"]["clean_label"] = False
    assert stands_for(old, new)
    new["attack"]["params"]["clean_label"] = True
    assert not stands_for(old, new)
    new["attack"]["params"]["clean_label"] = False
    new["attack"]["params"]["alpha"] = 0.5
    assert not stands_for(old, new)


def test_finetuned_victims_start_from_the_clean_model(tmp_path: Path, shared_cache: Path) -> None:
    """A model's ``finetune`` makes the victim the clean reference model fine-tuned on the poisoned set
    (the pretrained setting of BadRes's paper): the clean model is trained once and shared with the
    scratch-trained cells, whose hashes do not change; zero fine-tuning epochs give the clean model back."""
    model = {"arch": "resnet18", "width": 4}
    scratch = tiny(tmp_path, "scratch.yaml", models=[model])
    still = tiny(tmp_path, "still.yaml", models=[{**model, "finetune": {"epochs": 0}}])
    tuned = tiny(tmp_path, "tuned.yaml", models=[{**model, "finetune": {"epochs": 1, "lr": 0.01}}])
    hashes = {p.stem: plan_of(p).cells[0].hash for p in (scratch, still, tuned)}
    assert len(set(hashes.values())) == 3
    assert "finetune" not in plan_of(scratch).cells[0].model
    assert plan_of(still).cells[0].model_label == "resnet18-w4 finetuned"  # a report column of its own

    run_experiment(scratch, db=tmp_path / "scratch.db", cache_dir=shared_cache, quiet=True)
    before = fit_calls()
    run_experiment(still, db=tmp_path / "still.db", cache_dir=shared_cache, quiet=True)
    run_experiment(tuned, db=tmp_path / "tuned.db", cache_dir=shared_cache, quiet=True)
    assert fit_calls() - before == 2  # one fine-tuning each, the clean model came from the cache
    (base,), (same,), (moved,) = (rows(tmp_path / f"{n}.db") for n in ("scratch", "still", "tuned"))
    assert same["status"] == moved["status"] == "done"
    assert same["clean_ba"] == moved["clean_ba"] == base["clean_ba"]

    from backdoorkit.cache import ArtifactCache
    from backdoorkit.experiment.stages import CellWork

    def weights(spec: Path) -> tuple[torch.Tensor, torch.Tensor]:
        work = CellWork(plan_of(spec).cells[0], ArtifactCache(shared_cache))
        clean, victim = work.clean_model()[0], work.backdoored_model()[0]
        return nn.utils.parameters_to_vector(clean.parameters()), nn.utils.parameters_to_vector(
            victim.parameters()
        )

    clean, from_scratch = weights(scratch)
    assert torch.equal(weights(still)[1], clean)  # zero epochs: the clean model itself
    fine_tuned = weights(tuned)[1]
    assert not torch.equal(fine_tuned, clean)
    assert (fine_tuned - clean).norm() < 0.5 * (from_scratch - clean).norm()  # it started from the clean one


def test_a_bad_finetune_setting_is_one_clear_error(tmp_path: Path) -> None:
    from backdoorkit.errors import ConfigError

    model = {"arch": "resnet18", "width": 4}
    for finetune, message in (
        ({"optimiser": "adam"}, r"models\[0\]\.finetune: unknown training key 'optimiser'"),
        ({"epochs": -1}, r"resnet18-w4 finetuned: finetune: epochs"),
        ("adam", r"models\[0\]\.finetune: Input should be a valid dictionary"),
    ):
        with pytest.raises(ConfigError, match=message):
            plan_of(tiny(tmp_path, models=[{**model, "finetune": finetune}]))


def test_a_gated_cell_does_not_shorten_the_eta() -> None:
    """A cell stopped by ``min_victim_asr`` takes one evaluation: the ETA of the rest ignores its time."""
    from types import SimpleNamespace

    from backdoorkit.experiment.progress import Progress

    progress = Progress(3, quiet=True)
    progress.finished(SimpleNamespace(hash="a"), {"status": "skipped", "seconds": 1.0})  # type: ignore[arg-type]
    progress.finished(SimpleNamespace(hash="b"), {"status": "done", "seconds": 100.0})  # type: ignore[arg-type]
    assert (progress.gated, progress.done) == (1, 1) and progress.eta() == 100.0


def test_a_run_written_to_a_file_reports_its_trainings_epoch_by_epoch(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Line-by-line progress (no live view) turns on each job's epoch lines (every 300 s by default,
    :mod:`backdoorkit.train_report`), labelled with the job; ``epoch_lines=0``, ``quiet`` and a live view
    write none."""
    from types import SimpleNamespace

    from backdoorkit.experiment.runner import _epoch_lines

    for quiet, live, every in [(False, False, 300.0), (True, False, None), (False, True, None)]:
        assert _epoch_lines(None, SimpleNamespace(quiet=quiet, live_enabled=live)) == every  # type: ignore[arg-type]
    spec = tiny(tmp_path)
    run_experiment(spec, db=tmp_path / "a.db", cache_dir=tmp_path / "c1", live=False, epoch_lines=1e-9)
    err = capfd.readouterr().err
    trains = [line for line in err.splitlines() if line.startswith("[train] ")]
    assert len(trains) == 2, err  # the clean reference and the victim, one epoch each, in the cell's job
    for line in trains:
        assert line.startswith("[train] digits resnet18-w4 badnets / none seed 0: ResNet "), trains
        assert "(270 images), epoch 1/1, loss " in line and line.endswith("done"), trains
    run_experiment(spec, db=tmp_path / "b.db", cache_dir=tmp_path / "c2", live=False, epoch_lines=0)
    run_experiment(spec, db=tmp_path / "c.db", cache_dir=tmp_path / "c3", quiet=True)
    assert "[train]" not in capfd.readouterr().err
    from backdoorkit.errors import ConfigError

    with pytest.raises(ConfigError, match="--epoch-lines -1: need seconds >= 0"):
        run_experiment(spec, db=tmp_path / "d.db", cache_dir=tmp_path / "c3", epoch_lines=-1)


def test_a_spec_reads_shipped_artefacts_from_its_read_only_caches(tmp_path: Path) -> None:
    """``read_only_caches``: a victim copied from another run's cache is used, not retrained, and nothing
    is written there; a folder that does not exist is a one-line error before anything runs."""
    import shutil

    from backdoorkit.errors import ConfigError

    first = tiny(tmp_path, "first.yaml", clean_model=False)
    run_experiment(first, db=tmp_path / "a.db", cache_dir=tmp_path / "c1", quiet=True)
    shipped = tmp_path / "shipped"
    shutil.copytree(tmp_path / "c1" / "backdoored_model", shipped / "backdoored_model")
    spec = tiny(tmp_path, "second.yaml", clean_model=False, read_only_caches=["shipped"])
    before = fit_calls()
    summary = run_experiment(spec, db=tmp_path / "b.db", cache_dir=tmp_path / "c2", quiet=True)
    assert summary.done == 1 and fit_calls() == before  # the victim came from the shipped folder
    assert not (tmp_path / "c2" / "backdoored_model").exists()
    assert [r["metrics"] for r in rows(tmp_path / "a.db")] == [r["metrics"] for r in rows(tmp_path / "b.db")]
    missing = tiny(tmp_path, "third.yaml", read_only_caches=["nowhere"])
    with pytest.raises(ConfigError, match=r"read_only_caches: .*nowhere is not a folder"):
        run_experiment(missing, db=tmp_path / "c.db", cache_dir=tmp_path / "c3", quiet=True)


def test_the_live_view_shows_each_running_jobs_latest_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a live view the runner has every job keep its latest epoch in a status file (and no epoch
    lines); the view appends it to the job's row; the folder is gone after the run."""
    from rich.console import Console

    from backdoorkit import train_report
    from backdoorkit.experiment.progress import Progress, status_file

    seen: list[tuple[str, str]] = []
    real = train_report._Reporter.set_status

    def spy(self: Any, text: str) -> None:
        seen.append((str(self.status), text))
        real(self, text)

    monkeypatch.setattr(train_report._Reporter, "set_status", spy)
    run_experiment(tiny(tmp_path), db=tmp_path / "a.db", cache_dir=tmp_path / "c", live=True)
    assert [text for _, text in seen] == ["epoch 1/1, done"] * 2  # the clean model and the victim
    assert all(path and not Path(path).exists() for path, _ in seen)  # removed with the run's folder

    progress = Progress(2, live=False, console=Console(record=True, width=200))
    progress.status_dir = tmp_path / "status"
    progress.status_dir.mkdir()
    progress.started("cellA", "digits resnet18-w4 badnets / none seed 0")
    status_file(progress.status_dir, "cellA").write_text("epoch 3/30, ~2:04:00 left")
    progress.console.print(progress)
    assert "badnets / none seed 0 · epoch 3/30, ~2:04:00 left" in progress.console.export_text()


def test_the_gate_reads_a_finished_none_cell_instead_of_retraining_its_victim(
    tmp_path: Path, toys: list[str], shared_cache: Path
) -> None:
    """A gated cell whose victim's ``none`` cell is already done below the gate is recorded ``skipped``
    from that record, before anything runs: on a machine whose cache lacks the victim nothing trains."""
    db = tmp_path / "g.db"
    run_experiment(tiny(tmp_path, defenses=["none"]), db=db, cache_dir=shared_cache, quiet=True)
    none = rows(db)[0]
    assert none["asr"] < 0.99
    fresh = tmp_path / "fresh-cache"  # another machine: the victim is not in its cache
    before = fit_calls()
    summary = run_experiment(
        tiny(
            tmp_path,
            "gated.yaml",
            defenses=["none", "_toy_repair"],
            min_victim_asr=round(none["asr"] + 0.01, 4),
        ),
        db=db,
        cache_dir=fresh,
        quiet=True,
        resume=True,
    )
    assert (summary.done, summary.gated, summary.already) == (0, 1, 1) and fit_calls() == before
    gated = next(r for r in rows(db) if r["defense"] == "_toy_repair")
    assert gated["status"] == "skipped" and f"ASR {100 * none['asr']:.1f} %" in gated["skip_reason"]
    assert gated["info"]["gated_by"] == none["cell_hash"] and not (fresh / "backdoored_model").exists()
