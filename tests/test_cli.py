"""The command line, run as a user would (``python -m backdoorkit``; the user-error cases call the same
``main`` in-process): user errors end with one line on stderr and exit code 2, never a traceback;
``train --json`` prints one JSON object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backdoorkit.checkpoint import save_model, sidecar_path
from backdoorkit.models import build_model
from hardening_helpers import cli_error


def run_cli(
    *args: str, module: str = "backdoorkit", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BACKDOORKIT_CACHE": str(Path(cwd or ".") / ".cache"),
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def assert_user_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("backdoorkit: error: "), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model and dataset files for the error cases."""
    root = tmp_path_factory.mktemp("cli")
    out: dict[str, Path] = {"root": root}
    torch.manual_seed(0)
    # a model for 3-channel 32x32 images (CIFAR-like); digits are 1-channel
    out["rgb"] = save_model(build_model("resnet18", num_classes=10, in_channels=3, width=4), root / "rgb")
    # NaN weights in an otherwise valid checkpoint (the writer refuses NaN, so write the file by hand)
    grey = build_model("resnet18", num_classes=10, in_channels=1, width=4)
    good = save_model(grey, root / "grey")
    state = {k: v.clone() for k, v in grey.state_dict().items()}
    state["fc.weight"][0, 0] = float("nan")
    out["nan"] = root / "nan.safetensors"
    save_file(state, str(out["nan"]))
    sidecar_path(out["nan"]).write_text(sidecar_path(good).read_text())
    out["noise"] = root / "noise.safetensors"
    out["noise"].write_bytes(np.random.default_rng(0).bytes(2048))
    # an npz dataset whose training labels go past its ten classes
    rng = np.random.default_rng(0)
    y_train = rng.integers(0, 10, 40)
    y_train[5] = 12
    out["npz"] = root / "badlabels.npz"
    np.savez(
        out["npz"],
        x_train=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
        y_train=y_train,
        x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        y_test=rng.integers(0, 10, 20),
        classes=np.array([str(i) for i in range(10)]),
    )
    return out


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("unknown-dataset", ("unknown dataset 'nosuchset'",)),
        ("unknown-model", ("unknown model 'resnet19'",)),
        ("missing-init", ("no such model file",)),
        ("malformed-init", ("malformed safetensors",)),
        ("nan-init", ("non-finite", "fc.weight")),
        ("labels-out-of-range", ("12",)),
        ("wrong-channels", ("3-channel", "1-channel")),
        ("fractional-count", ("--poison-rate 1.5",)),
    ],
)
def test_user_errors_are_one_line(
    files: dict[str, Path],
    case: str,
    needles: tuple[str, ...],
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In-process (``main`` is the console script's function), so eight cases do not pay eight
    interpreter starts; ``test_module_entry_points`` and ``test_train_json_reports_ba_and_asr`` run the
    real ``python -m backdoorkit`` process."""
    root = files["root"]
    monkeypatch.chdir(root)
    monkeypatch.setenv("BACKDOORKIT_CACHE", str(root / ".cache"))
    args = {
        "unknown-dataset": ["--dataset", "nosuchset"],
        "unknown-model": ["--model", "resnet19"],
        "missing-init": ["--init", str(root / "missing.safetensors")],
        "malformed-init": ["--init", str(files["noise"])],
        "nan-init": ["--init", str(files["nan"])],
        "labels-out-of-range": ["--dataset", str(files["npz"])],
        "wrong-channels": ["--init", str(files["rgb"])],
        "fractional-count": ["--attack", "badnets", "--poison-rate", "1.5"],
    }[case]
    line = cli_error(capsys, "train", "--epochs", "1", "--width", "4", "--device", "cpu", *args)
    for needle in needles:
        assert needle in line, line


def test_train_json_reports_ba_and_asr(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    proc = run_cli(
        "train", "--json", "--epochs", "1", "--width", "4", "--device", "cpu", "--attack", "badnets",
        "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert isinstance(summary, dict)
    for key in ("ba", "asr", "asr_quantized"):
        assert 0.0 <= summary[key] <= 1.0, summary
    assert summary["epochs"] == 1 and summary["poison"]["poisoned"] > 0
    assert Path(summary["out"]) == out and out.is_file() and sidecar_path(out).is_file()
    # the saved model is a valid --init for the same data (the fit check passes)
    proc = run_cli("train", "--init", str(out), "--epochs", "0", "--json", "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 0.0 <= json.loads(proc.stdout)["ba"] <= 1.0


def test_module_entry_points(tmp_path: Path) -> None:
    proc = run_cli("--help", module="backdoorkit.cli", cwd=tmp_path)
    assert proc.returncode == 0 and "train" in proc.stdout
    # one user error through the real process: one line on stderr, exit 2, no traceback
    proc = run_cli("train", "--dataset", "nosuchset", "--epochs", "1", cwd=tmp_path)
    assert_user_error(proc, "unknown dataset 'nosuchset'")
