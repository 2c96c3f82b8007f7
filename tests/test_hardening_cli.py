"""Hostile command-line arguments: non-finite numbers, seeds out of range, unknown devices, ``--epochs 0``,
options that only mean something with ``--attack``, typer usage errors, output paths that cannot be
written (refused before any training) and ``report`` on a file that is no results database (never
written into).  Each ends with exit code 2 and one line on stderr, never a traceback or a usage box."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hardening_helpers import cli_error as one_line_error
from hardening_helpers import isolate

SECONDS = 20.0  # every refusal below happens before training: well under one epoch on a loaded CPU


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def cli_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    return one_line_error(capsys, *args, seconds=SECONDS)


TRAIN = ("train", "-d", "digits", "--width", "2", "--epochs", "1")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--lr", "nan"), "finite"),
        (("--lr", "inf"), "finite"),
        (("--attack", "badnets", "--poison-rate", "-inf"), "finite"),
        (("--seed", "-1"), "--seed"),
        (("--seed", str(2**40)), "--seed"),
        (("--device", "tpu"), "tpu"),
        (("--epochs", "0"), "untrained"),
        (("--batch-size", "0"), "--batch-size"),
        (("--width", "0"), "--width"),
        (("--width", "200000"), "--width"),
        (("--target", "-1", "--attack", "badnets"), "--target"),
        (("--target", "20", "--attack", "badnets"), "out of range"),
        (("--poison-rate", "0.1"), "--attack"),
        (("-p", "variant=white"), "--attack"),
        (("--target", "1"), "--attack"),
        (("--no-such-option",), "No such option"),
        (("--epochs", "many"), "--epochs"),
        (("--attack", "badnets", "-p", "nonsense"), "key=value"),
        (("--attack", "badnets", "-p", "no_such_param=1"), "no_such_param"),
    ],
)
def test_train_arguments(capsys: pytest.CaptureFixture, args: tuple[str, ...], needle: str) -> None:
    assert needle in cli_error(capsys, *TRAIN, *args)
    assert not list(Path.cwd().glob("*.safetensors"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_gpu(capsys: pytest.CaptureFixture) -> None:
    assert "no CUDA device" in cli_error(capsys, *TRAIN, "--device", "cuda")
    assert "no CUDA device" in cli_error(capsys, *TRAIN, "--device", "cuda:1")


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture) -> None:
    assert "No such command" in cli_error(capsys, "no-such-command")
    assert "--defense" in cli_error(capsys, "defend", "-m", "x.safetensors")
    assert "--out" in cli_error(capsys, "scan-skips", "-m", "x.safetensors", "-a", "badnets")
    assert "finite" in cli_error(
        capsys, "defend", "--defense", "ft_fc", "-m", "x.pt", "--clean-fraction", "nan"
    )
    assert "--attack" in cli_error(capsys, "defend", "--defense", "ft_fc", "-m", "x.pt", "--target", "1")


def test_output_paths_are_checked_before_training(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    assert "not a folder" in cli_error(capsys, *TRAIN, "-o", "a_file/m.safetensors")
    assert "is a folder" in cli_error(capsys, *TRAIN, "-o", "a_dir")
    assert "not a folder" in cli_error(capsys, "attack", "-a", "badnets", "--width", "2", "-o", "a_file/x")
    assert "not a folder" in cli_error(capsys, "triggers", "-o", "a_file/t.png", "--attacks", "badnets")
    line = cli_error(capsys, "scan-skips", "-m", "x.safetensors", "-a", "badnets", "-o", "a_file")
    assert "not a folder" in line
    line = cli_error(capsys, "defend", "--defense", "ft_fc", "-m", "x.safetensors", "-o", "a_file/r")
    assert "not a folder" in line
    assert (tmp_path / "a_file").read_text() == "x"


def test_report_on_a_file_that_is_not_a_database(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    victim = tmp_path / "notes.txt"
    victim.write_bytes(b"my notes, not a database\n")
    assert "not a results database" in cli_error(capsys, "report", str(victim))
    assert "not a results database" in cli_error(capsys, "report", str(victim), "--out", "rep")
    assert victim.read_bytes() == b"my notes, not a database\n"
    assert "--format" in cli_error(capsys, "report", str(victim), "--format", "docx")
