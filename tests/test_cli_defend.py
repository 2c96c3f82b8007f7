"""``backdoorkit defend`` (generic over model-repair defenses) and ``backdoorkit scan-skips``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backdoorkit.analysis import scan_skips
from backdoorkit.checkpoint import load_model, read_weights, save_model
from backdoorkit.cli import main
from backdoorkit.defenses import _shortcut as sc
from backdoorkit.models import get_gammas


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


@pytest.fixture(scope="module")
def model_file(badnets_digits, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli_defend") / "badnets.safetensors"
    return save_model(badnets_digits[0]["model"], path, config={"seed": 0})


def test_defend_json_shape(model_file: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    argv = [
        "defend",
        "--defense",
        "ft_fc",
        "--model",
        str(model_file),
        "--dataset",
        "digits",
        "--clean-fraction",
        "0.1",
        "--attack",
        "badnets",
        "--json",
        "-P",
        "epochs=1",
        "-P",
        "min_steps=null",
        "--out",
        str(tmp_path / "fixed.safetensors"),
    ]
    code, out, _ = run(argv, capsys)
    assert code == 0
    res = json.loads(out)
    assert set(res) >= {"before", "after", "defense", "info", "seconds"}
    assert res["defense"] == "ft_fc" and res["params"]["epochs"] == 1 and res["clean_samples"] == 144
    for when in ("before", "after"):
        assert set(res[when]) == {"ba", "asr"}
        assert all(0.0 <= v <= 1.0 for v in res[when].values())
    assert res["before"]["asr"] > 0.9 and res["before"]["ba"] > 0.95
    assert res["seconds"] > 0 and Path(res["out"]).is_file()
    assert load_model(res["out"]).card["config"]["defense"]["defense"] == "ft_fc"

    code, out, _ = run([a for a in argv[:-2] if a != "--json"], capsys)  # table output, no --out
    assert code == 0 and "BA" in out and "ASR" in out


def test_defend_without_attack_reports_ba_only(model_file: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(
        [
            "defend",
            "--defense",
            "ft_fc",
            "--model",
            str(model_file),
            "-P",
            "epochs=1",
            "-P",
            "min_steps=null",
            "--clean-fraction",
            "50",
            "--json",
        ],
        capsys,
    )
    res = json.loads(out)
    assert code == 0 and res["before"]["asr"] is None and res["after"]["asr"] is None
    assert res["clean_samples"] == 50


def test_defense_result_does_not_depend_on_the_evaluation_attack(
    model_file: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """The evaluation attack never reaches the defense: same model and same info whatever it is."""
    results, weights = [], []
    for i, extra in enumerate(
        [["--attack", "badnets"], ["--attack", "badnets", "-p", "variant=grid", "--target", "3"], []]
    ):
        sc.clear_selection_cache()
        out_path = tmp_path / f"ssft{i}.safetensors"
        code, out, err = run(
            [
                "defend",
                "--defense",
                "ssft",
                "--model",
                str(model_file),
                "--json",
                "-P",
                "surrogate_epochs=3",
                "-P",
                "epochs=2",
                "-P",
                "min_steps=null",
                "--out",
                str(out_path),
                *extra,
            ],
            capsys,
        )
        assert code == 0, err
        res = json.loads(out)
        for volatile in ("selection_seconds", "finetune_seconds"):
            res["info"].pop(volatile)
        res["info"]["selection"].pop("seconds")
        res["info"]["finetune"].pop("seconds")
        results.append((res["after"]["ba"], res["info"]))
        weights.append(read_weights(out_path))
        assert get_gammas(load_model(out_path)) == res["info"]["gammas"]
    assert results[0] == results[1] == results[2]
    assert all(torch.equal(weights[0][k], w[k]) for w in weights[1:] for k in weights[0])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["defend", "--defense", "no_such", "--model", "{m}"], "unknown defense"),
        (["detect", "--detector", "strp", "--model", "{m}"], "did you mean 'strip'?); detect runs: feature_"),
        (["inspect", "--inspector", "nc", "--model", "{m}"], "inspect runs: deepinspect, neural_cleanse"),
        (["defend", "--defense", "ssft", "--model", "{m}", "-P", "lr=-1"], "lr"),
        (["defend", "--defense", "ssft", "--model", "{m}", "-p", "variant=grid"], "--attack"),
        (["defend", "--defense", "ssft", "--model", "{m}", "--clean-fraction", "0"], "clean-fraction"),
        (["defend", "--defense", "ssft", "--model", "/nonexistent.safetensors"], "no such model file"),
        (
            ["scan-skips", "--model", "{m}", "--attack", "badnets", "--gammas", "1,x", "--out", "/tmp/x"],
            "gammas",
        ),
    ],
)
def test_errors_are_one_line(
    model_file: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = run([a.replace("{m}", str(model_file)) for a in argv], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_scan_skips_command_writes_csv_json_png(
    model_file: Path, badnets_digits, digits_test, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    out_dir = tmp_path / "scan"
    code, out, err = run(
        [
            "scan-skips",
            "--model",
            str(model_file),
            "--dataset",
            "digits",
            "--attack",
            "badnets",
            "--gammas",
            "1, 0.5, 0",
            "--skip",
            "layer1.0",
            "--skip",
            "layer3.1",
            "--out",
            str(out_dir),
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads(out)
    assert {Path(p).name for p in res["files"].values()} == {
        "skip_scan.csv",
        "skip_scan.json",
        "skip_scan.png",
    }
    assert all(Path(p).is_file() for p in res["files"].values())
    direct = scan_skips(
        load_model(model_file),
        digits_test,
        badnets_digits[0]["attack"],
        (1.0, 0.5, 0.0),
        ["layer1.0", "layer3.1"],
    )
    assert res["rows"] == direct.to_rows()
    code, out, _ = run(
        [
            "scan-skips",
            "--model",
            str(model_file),
            "--attack",
            "badnets",
            "--gammas",
            "1,0",
            "--skip",
            "layer4.1",
            "--out",
            str(out_dir),
        ],
        capsys,
    )
    assert code == 0 and "layer4.1" in out and "wrote png" in out
