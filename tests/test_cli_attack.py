"""``backdoorkit attack --json`` (keys and ranges, tiny training run) and ``backdoorkit triggers``
(a PNG gallery), plus their error handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backdoorkit.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def test_attack_json(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    argv = [
        "attack",
        "--dataset",
        "digits",
        "--model",
        "resnet18",
        "--attack",
        "badnets",
        "-p",
        "variant=grid",
        "--target",
        "2",
        "--poison-rate",
        "50",
        "--width",
        "4",
        "--epochs",
        "1",
        "--seed",
        "1",
        "--out",
        str(tmp_path / "bd.safetensors"),
        "--json",
    ]
    code, out, _ = run(argv, capsys)
    assert code == 0
    res = json.loads(out)
    for key in ("ba", "asr", "asr_quantized", "clean_ba", "clean_asr"):
        assert 0.0 <= res[key] <= 1.0, key
    assert res["poisoned"] == 50 and res["attack"] == "badnets" and res["epochs"] == 1
    assert res["params"]["variant"] == "grid" and res["params"]["target"] == 2
    assert Path(res["out"]).is_file()


def test_attack_table_output(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(["attack", "-a", "blended", "--width", "4", "--epochs", "1"], capsys)
    assert code == 0 and "BA" in out and "ASR" in out and "clean model" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["attack", "-a", "blended", "-p", "alpha=3"], "alpha"),
        (["attack", "-a", "no_such_attack"], "unknown attack"),
        (["attack", "-a", "blended", "--poison-rate", "1.5"], "poison-rate"),
        (["attack", "-a", "blended", "--target", "12"], "out of range"),
    ],
)
def test_attack_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run([*argv, "--epochs", "1", "--width", "4"], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_triggers_gallery_png(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    out = tmp_path / "gallery.png"
    argv = ["triggers", "-d", "digits", "-o", str(out), "--attacks", "badnets,blended", "--n", "3", "--json"]
    code, stdout, _ = run(argv, capsys)
    assert code == 0
    assert json.loads(stdout)["attacks"] == ["badnets", "blended"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(out) as img:
        w, h = img.size
    assert h > w > 100  # two blocks of three rows, three columns
