"""``backdoorkit detect`` and ``backdoorkit inspect``: ``defend`` for input detectors and model inspectors.

``detect --detector strip --model M --dataset D --attack A [--reject] [--json]`` fits the detector on
clean training samples and reports ``auroc``, ``tpr_at_1fpr``, ``tpr_at_5fpr`` and ``threshold`` on
clean vs triggered test images (``--reject``: the guarded model's BA / ASR, rejected inputs removed).
``inspect --inspector neural_cleanse --model M --dataset D [--json]`` prints the verdict: ``infected``,
``target`` (class index or null) and ``anomaly_index``.  Both take the options of ``defend``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from backdoorkit.cli.app import app
from backdoorkit.cli.common import ArchOpt, DataRootOpt, DeviceOpt, JsonOpt, ParamOpt
from backdoorkit.cli.defend import _defense_for, _finish, run_on_model

ModelOpt = typer.Option(..., "--model", "-m", help="The suspicious model (.safetensors + sidecar).")
DatasetOpt = typer.Option("digits", "--dataset", "-d", help="Registered dataset name or path.")
CleanOpt = typer.Option(0.1, "--clean-fraction", help="Clean samples: fraction (<1) or count (>=1).")
MethodParamOpt = typer.Option(None, "--defense-param", "-P", help="A method parameter as key=value.")
TargetOpt = typer.Option(
    None,
    "--target",
    help="Target class of the evaluation attack (default: the one the sidecar records, else 0).",
)
AttackSeedOpt = typer.Option(None, "--attack-seed", help="Seed of the evaluation trigger.")
SeedOpt = typer.Option(0, "--seed", help="Seed of the clean-sample draw and of the method.")


@app.command()
def detect(
    detector: str = typer.Option(..., "--detector", help="A registered input detector (strip ...)."),
    model: Path = ModelOpt,
    dataset: str = DatasetOpt,
    attack: str | None = typer.Option(
        None, "--attack", "-a", help="Attack whose triggered test images are to be detected."
    ),
    param: list[str] | None = ParamOpt,
    target: int | None = TargetOpt,
    attack_seed: int | None = AttackSeedOpt,
    clean_fraction: float = CleanOpt,
    defense_param: list[str] | None = MethodParamOpt,
    reject: bool = typer.Option(False, "--reject", help="Also report the guarded model's BA / ASR."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for the score histograms (scores.png)."
    ),
    arch: str | None = ArchOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    data_root: Path | None = DataRootOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Fit DETECTOR on clean samples; AUROC / TPR at 1 % and 5 % FPR on clean vs triggered test images."""
    d = _defense_for(detector, defense_param, ("detector",), "detect")
    summary = run_on_model(
        d, model, attack, param, target, attack_seed, clean_fraction,
        dataset=dataset, data_root=data_root, seed=seed, device=device, arch=arch,
    )  # fmt: skip
    _finish(d, summary, out, reject, json_out, str(model), dataset)


@app.command("inspect")
def inspect_cmd(
    inspector: str = typer.Option(..., "--inspector", help="A registered model inspector."),
    model: Path = ModelOpt,
    dataset: str = DatasetOpt,
    attack: str | None = typer.Option(None, "--attack", "-a", help="Attack to also report ASR with."),
    param: list[str] | None = ParamOpt,
    target: int | None = TargetOpt,
    attack_seed: int | None = AttackSeedOpt,
    clean_fraction: float = CleanOpt,
    defense_param: list[str] | None = MethodParamOpt,
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for the recovered trigger (trigger.png)."
    ),
    arch: str | None = ArchOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    data_root: Path | None = DataRootOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Ask INSPECTOR whether MODEL is backdoored: infected, suspected target, anomaly index."""
    d = _defense_for(inspector, defense_param, ("inspector",), "inspect")
    summary = run_on_model(
        d, model, attack, param, target, attack_seed, clean_fraction,
        dataset=dataset, data_root=data_root, seed=seed, device=device, arch=arch,
    )  # fmt: skip
    summary["scores"] = dict(summary["result"].verdict.scores)
    _finish(d, summary, out, False, json_out, str(model), dataset)
