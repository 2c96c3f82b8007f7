"""Hostile specs and run options: duplicate YAML keys, alias bombs and deep nesting (within a memory and
time bound), booleans where numbers are expected, an empty matrix, a target out of range for the
dataset, negative or absurd widths, devices this machine lacks, and ``--db`` pointing at a folder, an
unwritable place or a file that is not SQLite.  Each ends with exit code 2 and one line on stderr
before the first cell runs (no database is created).  Also: after ``kill -9`` of ``run --jobs 2`` no
worker process stays behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from backdoorkit.errors import ConfigError
from backdoorkit.experiment.spec import load_spec
from hardening_helpers import cli_error, isolate, refused_within_bounds

PEAK_MB = 32
SECONDS = 10.0

BASE = """name: hostile
datasets: [digits]
models: [{arch: resnet18, width: 2}]
train: {epochs: 1}
attacks: [{name: badnets, target: 1}]
defenses: [none]
seeds: [0]
clean_model: false
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def run_error(
    capsys: pytest.CaptureFixture, tmp_path: Path, text: str, *needles: str, db: str = "r.db"
) -> str:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    line = cli_error(capsys, "run", str(spec), "--db", db, "--quiet")
    for needle in needles:
        assert needle in line, line
    if db == "r.db":
        assert not (tmp_path / "r.db").exists()  # refused before the first cell: nothing written
    return line


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (BASE + "seeds: [1]\n", "duplicate key 'seeds'"),
        (BASE.replace("seeds: [0]", "seeds: [true]"), "boolean"),
        (BASE.replace("width: 2", "width: true"), "boolean"),
        (BASE.replace("epochs: 1", "epochs: true"), "boolean"),
        (BASE.replace("target: 1", "target: false"), "boolean"),
        (BASE.replace("{name: badnets, target: 1}", "{name: badnets, params: {target: true}}"), "boolean"),
        (BASE.replace("datasets: [digits]", "datasets: []"), "empty"),
        (BASE.replace("attacks: [{name: badnets, target: 1}]", "attacks: []"), "empty"),
        (BASE.replace("target: 1", "target: 12"), "out of range"),
        (BASE.replace("width: 2", "width: -4"), "width"),
        (BASE.replace("width: 2", "width: 200000"), "width"),
        (BASE.replace("width: 2", "width: 4000"), "parameters"),
        (BASE.replace("width: 2", "width: [2, 0]"), "width"),
        (BASE + "device: tpu\n", "tpu"),
        (BASE + "device: meta\n", "meta"),
        (BASE.replace("{arch: resnet18, width: 2}", "{arch: vit_tiny, kwargs: {patch: 5}}"), "patch"),
        (BASE + "scenarios: [S1]\ndefenses: [ft_fc]\n", "duplicate key 'defenses'"),
        ("[not, a, mapping]\n", "mapping"),
        (BASE + "!!python/object/apply:os.system [echo hi]\n", "YAML"),
    ],
)
def test_hostile_specs_exit_2_before_the_first_cell(
    capsys: pytest.CaptureFixture, tmp_path: Path, text: str, needle: str
) -> None:
    run_error(capsys, tmp_path, text, needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_spec_device_this_machine_lacks(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    run_error(capsys, tmp_path, BASE + "device: cuda\n", "no CUDA device")


def test_db_that_cannot_be_a_results_database(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    (tmp_path / "folder.db").mkdir()
    run_error(capsys, tmp_path, BASE, "is a folder", db="folder.db")
    (tmp_path / "plain").write_text("x")
    run_error(capsys, tmp_path, BASE, "not a folder", db="plain/r.db")
    victim = tmp_path / "notes.db"
    victim.write_bytes(b"these are my notes\n" * 100)
    run_error(capsys, tmp_path, BASE, "not a results database", db=str(victim))
    assert victim.read_bytes() == b"these are my notes\n" * 100
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        run_error(capsys, tmp_path, BASE, "not writable", db="locked/r.db")


def bounded(path: Path, match: str) -> None:
    refused_within_bounds(lambda: load_spec(path), match, error=ConfigError, peak_mb=PEAK_MB, seconds=SECONDS)


def test_yaml_aliases_and_nesting_are_bounded(tmp_path: Path) -> None:
    """A billion-laughs spec (10^9 values once expanded, 1 KB on disk) and 50,000 nested lists."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BASE + "\n".join(lines) + "\nextra: *a9\n")
    bounded(bomb, "aliases are expanded")
    deep = tmp_path / "deep.yaml"
    deep.write_text(BASE + "extra: " + "[" * 50_000 + "]" * 50_000 + "\n")
    bounded(deep, "nested deeper")
    big = tmp_path / "big.yaml"
    big.write_text(BASE + "# " + "x" * (2 << 20) + "\n")
    bounded(big, "larger than")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_kill_9_of_run_jobs_2_leaves_no_workers(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(BASE.replace("epochs: 1", "epochs: 30").replace("seeds: [0]", "seeds: [0, 1, 2, 3]"))
    env = {**os.environ, "BACKDOORKIT_CACHE": str(tmp_path / "cache")}
    run = subprocess.Popen(
        [sys.executable, "-m", "backdoorkit", "run", str(spec), "--db", "r.db", "--jobs", "2", "--quiet"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        workers: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.5)
            workers = [
                p for p in _children(run.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()
            ]
        assert len(workers) >= 2, "the workers did not start"
        os.kill(run.pid, signal.SIGKILL)
        run.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.25)
        assert not any(_alive(p) for p in workers), "a worker outlived its run"
    finally:
        if run.poll() is None:
            run.kill()
