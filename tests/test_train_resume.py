"""Resumable training (:mod:`backdoorkit.resume`): an interrupted plain ``fit`` goes on from its last
epoch's snapshot and ends bit-identical to an uninterrupted run on CPU; a snapshot of another run is
never loaded; calls with state outside ``fit`` are not snapshotted; the runner resumes a victim's
training after a failed run, and ``backdoorkit train --snapshots`` resumes a stopped command."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

import backdoorkit.train as train_mod
from backdoorkit.cli import main
from backdoorkit.data import ImageSet, take_fraction
from backdoorkit.experiment.runner import run_experiment
from backdoorkit.experiment.store import ResultStore
from backdoorkit.pipeline import make_model
from backdoorkit.resume import resumable_training
from backdoorkit.train import Callback, TrainConfig, fit
from hardening_helpers import cli_error, isolate, run_cli

CFG = TrainConfig(epochs=3, batch_size=64, device="cpu")  # 256 rows: 4 steps an epoch, 12 in all


class Interrupted(RuntimeError):
    pass


@pytest.fixture(scope="module")
def small(digits_train: ImageSet) -> ImageSet:
    return take_fraction(digits_train, 256, seed=1)


def _model(data: ImageSet) -> nn.Module:
    return make_model("resnet18", data, width=4, seed=0)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, batches: int) -> list[int]:
    """Make ``fit`` raise when it loads batch number ``batches`` (counted from 0); returns the counter."""
    calls = [0]
    real: Callable[..., torch.Tensor] = train_mod.to_pixels

    def counting(x: torch.Tensor) -> torch.Tensor:
        if calls[0] == batches:
            raise Interrupted(f"stopped at batch {batches}")
        calls[0] += 1
        return real(x)

    monkeypatch.setattr(train_mod, "to_pixels", counting)
    return calls


def test_interrupted_fit_resumes_bit_identical(
    small: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _model(small)
    full = fit(reference, small, CFG)

    folder = tmp_path / "partial"
    with monkeypatch.context() as m:
        _interrupt_after(m, 6)  # in the second epoch: the snapshot holds epoch 1
        with pytest.raises(Interrupted), resumable_training(folder):
            fit(_model(small), small, CFG)
    assert (folder / "fit-0.pt").is_file()

    model = _model(small)
    counter = _interrupt_after(monkeypatch, 10**9)
    with resumable_training(folder):
        res = fit(model, small, CFG)
    assert counter[0] == 8  # only epochs 2 and 3 trained
    assert res.resumed_epochs == 1 and res.steps == full.steps == 12
    assert res.losses == pytest.approx(full.losses, abs=0) and len(res.losses) == 3
    assert res.images == full.images
    want = _state(reference)
    for k, v in _state(model).items():
        assert torch.equal(v, want[k]), k
    assert not folder.exists()  # removed when the block ends without an error


def test_snapshot_of_another_run_is_ignored(
    small: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "partial"
    with monkeypatch.context() as m:
        _interrupt_after(m, 6)
        with pytest.raises(Interrupted), resumable_training(folder):
            fit(_model(small), small, CFG)
    other = CFG.model_copy(update={"lr": 0.05})
    reference = _model(small)
    fit(reference, small, other)
    model = _model(small)
    with pytest.warns(UserWarning, match="belongs to another run"), resumable_training(folder):
        res = fit(model, small, other)
    assert res.resumed_epochs == 0
    want = _state(reference)
    assert all(torch.equal(v, want[k]) for k, v in _state(model).items())

    # a torn file is ignored too, and overwritten by the next snapshot
    folder.mkdir()
    (folder / "fit-0.pt").write_bytes(b"not a snapshot")
    with pytest.warns(UserWarning, match="unreadable"), resumable_training(folder, keep=True):
        assert fit(_model(small), small, CFG).resumed_epochs == 0


def test_calls_with_outside_state_are_not_snapshotted(
    small: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "partial"
    _interrupt_after(monkeypatch, 6)
    with pytest.raises(Interrupted), resumable_training(folder):
        fit(_model(small), small, CFG, callbacks=[Callback()])
    assert not folder.exists() or not any(folder.iterdir())


def test_attacker_model_training_resumes_from_the_cache(
    small: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The self-trained attacker of the model-based attacks (hours at full width on a CPU) resumes a
    stopped training from ``<cache>/partial/<key>`` and ends as an uninterrupted one would."""
    from backdoorkit.attacks._model_based import ModelBasedParams, attacker_model
    from backdoorkit.cache import ArtifactCache

    params = ModelBasedParams(attacker_width=4, attacker_epochs=3)
    reference = attacker_model(params, small, 0, ArtifactCache(tmp_path / "ref"))

    cache = ArtifactCache(tmp_path / "cache")
    with monkeypatch.context() as m:
        _interrupt_after(m, 3)  # recipe batches of 128: 2 an epoch, stopped in the second epoch
        with pytest.raises(Interrupted):
            attacker_model(params, small, 0, cache)
    (partial,) = (cache.root / "partial").iterdir()
    assert (partial / "fit-0.pt").is_file()

    counter = _interrupt_after(monkeypatch, 10**9)
    model = attacker_model(params, small, 0, cache)
    assert counter[0] == 4  # only epochs 2 and 3 were trained
    want = _state(reference)
    assert all(torch.equal(v, want[k]) for k, v in _state(model).items())
    assert not partial.exists()  # dropped once the attacker is cached


def _spec(tmp_path: Path) -> Path:
    """One BadNets cell on 300 digits (270 after the 10 % holdout: 4 steps an epoch, 12 in all)."""
    spec = {
        "name": "resume",
        "datasets": [{"name": "digits", "subset": 300, "test_subset": 100}],
        "models": [{"arch": "resnet18", "width": 4}],
        "train": {"epochs": 3, "batch_size": 64},
        "attacks": ["badnets"],
        "defenses": ["none"],
        "seeds": [0],
        "clean_fraction": 0.1,
        "clean_model": False,
        "device": "cpu",
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_failed_snapshot_write_does_not_stop_training(
    small: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _model(small)
    fit(reference, small, CFG)

    def no_space(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    model = _model(small)
    with pytest.warns(UserWarning, match="goes on without snapshots"), resumable_training(tmp_path / "p"):
        res = fit(model, small, CFG)
    assert res.steps == 12 and len(res.losses) == 3
    want = _state(reference)
    assert all(torch.equal(v, want[k]) for k, v in _state(model).items())


def _cells(db: Path) -> list[dict[str, Any]]:
    store = ResultStore(db)
    try:
        return store.rows()
    finally:
        store.close()


def test_runner_resumes_a_victim_training_after_a_failed_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(tmp_path)
    with monkeypatch.context() as m:
        whole = _interrupt_after(m, 10**9)  # counts the batches of training and evaluation
        reference = run_experiment(spec, db=tmp_path / "ref.db", cache_dir=tmp_path / "ref-cache", quiet=True)
    assert reference.failed == 0

    cache = tmp_path / "cache"
    with monkeypatch.context() as m:
        _interrupt_after(m, 6)
        first = run_experiment(spec, db=tmp_path / "r.db", cache_dir=cache, quiet=True)
    assert first.failed == 1
    assert any((cache / "partial").rglob("fit-0.pt"))

    counter = _interrupt_after(monkeypatch, 10**9)
    second = run_experiment(
        spec, db=tmp_path / "r.db", cache_dir=cache, quiet=True, resume=True, retry_failed=True
    )
    assert second.failed == 0
    assert counter[0] == whole[0] - 4, (counter, whole)  # the snapshot saved the first epoch's 4 steps
    assert not any((cache / "partial").rglob("*.pt"))
    (row,) = _cells(tmp_path / "r.db")
    assert row["stage_seconds"]["resumed"] == ["backdoor_model"], row["stage_seconds"]
    got = {r["cell_hash"]: r["metrics"] for r in _cells(tmp_path / "r.db")}
    want = {r["cell_hash"]: r["metrics"] for r in _cells(tmp_path / "ref.db")}
    assert got == want


def test_train_command_resumes_from_its_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    isolate(monkeypatch, tmp_path)
    args = ["train", "--json", "--epochs", "2", "--width", "4", "--device", "cpu", "--attack", "badnets"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err[-2000:]
    assert "[train]" not in err  # a short training says nothing (epoch lines come every 300 s)
    whole = json.loads(out)
    assert whole["resumed"] is False and whole["images_per_second"] > 0

    snaps = tmp_path / "snaps"
    with monkeypatch.context() as m:
        _interrupt_after(m, 15)  # digits: 11 steps an epoch, so this is in the second epoch
        with pytest.raises(Interrupted):
            main([*args, "--snapshots", str(snaps)])
    assert (snaps / "fit-0.pt").is_file()
    capsys.readouterr()
    code, out, err = run_cli(capsys, *args, "--snapshots", str(snaps), "--epoch-lines", "1e-9")
    assert code == 0, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("[train] ")]
    assert len(lines) == 2 and all(
        line.startswith("[train] train resnet18 on digits poisoned by badnets: ResNet ") for line in lines
    ), err
    assert "resumed after epoch 1/2" in lines[0] and "epoch 2/2" in lines[1] and lines[1].endswith("done")
    resumed = json.loads(out)
    assert resumed["resumed"] is True and resumed["images_per_second"] is None
    assert (resumed["ba"], resumed["asr"]) == (whole["ba"], whole["asr"])
    assert not snaps.exists()

    (tmp_path / "a-file").write_text("x")
    assert "not a folder" in cli_error(capsys, *args, "--snapshots", str(tmp_path / "a-file"))


def test_the_attacker_can_be_trained_in_bf16(
    small: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``attacker_amp=True`` trains the self-trained attacker with bf16 autocast and channels_last (the
    opt-in that makes a full-width attacker affordable on a CPU); the default keeps the device's choice."""
    import backdoorkit.train as train_module
    from backdoorkit.attacks._model_based import ModelBasedParams, attacker_model
    from backdoorkit.cache import ArtifactCache

    seen = []
    real_fit = train_module.fit

    def spy(model, data, cfg, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((cfg.amp, cfg.channels_last))
        return real_fit(model, data, cfg, *args, **kwargs)

    monkeypatch.setattr(train_module, "fit", spy)
    attacker_model(
        ModelBasedParams(attacker_width=2, attacker_epochs=1), small, 0, ArtifactCache(tmp_path / "a")
    )
    fast = ModelBasedParams(attacker_width=2, attacker_epochs=1, attacker_amp=True)
    model = attacker_model(fast, small, 0, ArtifactCache(tmp_path / "b"))
    assert seen == [(None, None), (True, True)]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: fp32 weights stored


def test_epoch_lines_say_what_trains_how_far_and_what_is_left(
    small: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """:func:`report_training`: an epoch line per due epoch (model, data, epoch k/E, time left), the end of
    a call that spoke, one line for a resumed start; nothing before ``every`` seconds; nothing outside
    the block."""
    import io

    from backdoorkit import train_report
    from backdoorkit.train_report import report_training, training_role

    fit(_model(small), small, CFG)
    assert capsys.readouterr().err == ""  # off by default

    buf = io.StringIO()
    with report_training("victim of cell 1", every=0, stream=buf):
        fit(_model(small), small, CFG)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3, lines
    for k, line in enumerate(lines, 1):
        assert line.startswith("[train] victim of cell 1: ResNet ") and "(256 images)" in line, line
        assert f"epoch {k}/3, loss " in line and " acc " in line and " in this run" in line, line
    assert lines[0].endswith("left") and lines[-1].endswith("done")
    buf = io.StringIO()
    status = tmp_path / "role.txt"
    with report_training("cell 2", every=0, stream=buf, status=status), training_role("attacker model"):
        fit(_model(small), small, CFG.model_copy(update={"epochs": 1}))
    assert buf.getvalue().startswith("[train] cell 2: attacker model, ResNet ")  # not the cell's model
    assert status.read_text() == "attacker model epoch 1/1, done"

    buf = io.StringIO()
    with report_training("short calls", every=3600, stream=buf):
        fit(_model(small), small, CFG)
        fit(_model(small), small, CFG)
    assert buf.getvalue() == ""  # nothing is due before an hour: short trainings stay silent
    clock = [0.0]
    monkeypatch.setattr(train_report, "_clock", lambda: clock[0])
    buf = io.StringIO()
    with report_training("an hour a epoch", every=3600, stream=buf):
        model = _model(small)
        clock[0] = 3600.0  # the first epoch ends an hour after the block began: due
        fit(model, small, CFG.model_copy(update={"epochs": 1}))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 and "epoch 1/1" in lines[0] and lines[0].endswith("done"), lines
    monkeypatch.undo()

    folder = tmp_path / "partial"
    with monkeypatch.context() as m:
        _interrupt_after(m, 6)
        with pytest.raises(Interrupted), resumable_training(folder):
            fit(_model(small), small, CFG)
    buf = io.StringIO()
    with resumable_training(folder), report_training("resumed", every=3600, stream=buf):
        fit(_model(small), small, CFG)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and "resumed after epoch 1/3 from its snapshot" in lines[0], lines
    assert "epoch 3/3" in lines[1] and lines[1].endswith("done")
    with pytest.raises(ValueError, match="every must be >= 0"), report_training("x", every=-1):
        pass
    status = tmp_path / "status" / "job.txt"  # the live view's form: the latest epoch, no lines
    with report_training("gone", every=None, status=status):
        fit(_model(small), small, CFG)
    assert not status.parent.exists()  # a missing folder is not made (the run that made it has ended)
    status.parent.mkdir()
    with report_training("live", every=None, status=status):
        fit(_model(small), small, CFG)
    assert status.read_text() == "epoch 3/3, done" and capsys.readouterr().err == ""


def test_time_left_follows_the_recent_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The time left extrapolates the latest three epochs: a first epoch of 100 s followed by epochs of 10 s
    gives 50 s left after epoch 5 of 10 (the mean pace would say 140 s); before the fourth epoch the
    mean pace is all there is."""
    import io

    from backdoorkit import train_report
    from backdoorkit.train_report import EpochLines, report_training

    clock = [0.0]
    monkeypatch.setattr(train_report, "_clock", lambda: clock[0])
    buf = io.StringIO()
    with report_training("pace", every=0, stream=buf):
        lines = EpochLines(nn.Linear(2, 2), "toy", 10, epochs=10)
        for epoch, at in enumerate((100.0, 110.0, 120.0, 130.0, 140.0), 1):
            clock[0] = at
            lines.epoch_end(epoch, loss=1.0, accuracy=None)
    out = buf.getvalue().splitlines()
    assert out[2].endswith("epoch 3/10, loss 1.000, 0:02:00 in this run, ~0:04:40 left"), out[2]
    assert out[4].endswith("epoch 5/10, loss 1.000, 0:02:20 in this run, ~0:00:50 left"), out[4]
