"""``backdoorkit defend`` (any model-repair defense) and ``backdoorkit scan-skips``.

``defend`` loads a model file, takes the defender's clean samples as a stratified fraction of the
dataset's *training* split, runs a registered :class:`~backdoorkit.defenses.base.ModelRepair` defense
and prints BA (and ASR, when ``--attack`` names the attack to evaluate) before and after.  The
evaluation attack is never passed to the defense.  ``--json`` prints one object::

    {"before": {"ba": .., "asr": ..}, "after": {"ba": .., "asr": ..},
     "defense": name, "params": {...}, "info": {...}, "seconds": ..}

with BA / ASR as fractions in [0, 1] (``asr`` is null without ``--attack``).

``scan-skips`` writes the skip scan of a model (BA and ASR as each skip is suppressed; SSFT's
Figure 1) as CSV, JSON and PNG into a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from backdoorkit.cli.app import app
from backdoorkit.cli.common import (
    DataRootOpt,
    DeviceOpt,
    JsonOpt,
    ParamOpt,
    console,
    emit_json,
    load_splits,
    parse_params,
    pct,
)
from backdoorkit.errors import ConfigError, ModelFileError


def _load_checked(path: Path, num_classes: int, device: str) -> Any:
    from backdoorkit.checkpoint import load_model
    from backdoorkit.device import resolve_device

    net = load_model(path, device=resolve_device(device))
    n = getattr(net, "num_classes", None)
    if n is not None and n != num_classes:
        raise ModelFileError(f"{path}: model has {n} classes, the dataset {num_classes}")
    return net


def _eval_attack(name: str | None, target: int, params: list[str] | None, train: Any, seed: int) -> Any:
    """The attack to *evaluate* with (set up on the training split with the training seed)."""
    if name is None:
        if params:
            raise ConfigError("-p/--param sets attack parameters; give --attack too")
        return None
    from backdoorkit.attacks import build_attack

    atk = build_attack(name, target=target, **parse_params(params))
    atk.setup(train, seed=seed)
    return atk


def _attack_seed(explicit: int | None, net: Any) -> int:
    if explicit is not None:
        return explicit
    card = getattr(net, "card", None) or {}
    seed = (card.get("config") or {}).get("seed")
    return int(seed) if isinstance(seed, int) else 0


def _metrics(net: Any, test: Any, atk: Any) -> dict[str, float | None]:
    from backdoorkit.metrics import attack_success_rate, benign_accuracy

    return {"ba": benign_accuracy(net, test), "asr": attack_success_rate(net, test, atk) if atk else None}


def _clean_amount(fraction: float) -> float | int:
    if fraction <= 0:
        raise ConfigError(f"--clean-fraction must be positive, got {fraction}")
    if fraction >= 1:
        if fraction != int(fraction):
            raise ConfigError(f"--clean-fraction {fraction}: a fraction in (0, 1) or a whole count")
        return int(fraction)
    return float(fraction)


@app.command()
def defend(
    defense: str = typer.Option(..., "--defense", help="A model-repair defense (ssft, ft_all ...)."),
    model: Path = typer.Option(..., "--model", "-m", help="The suspicious model (.safetensors + sidecar)."),
    dataset: str = typer.Option("digits", "--dataset", "-d", help="Registered dataset name or path."),
    clean_fraction: float = typer.Option(
        0.1, "--clean-fraction", help="Clean samples: fraction (<1) or count (>=1) of the train split."
    ),
    defense_param: list[str] | None = typer.Option(
        None, "--defense-param", "-P", help="A defense parameter as key=value (repeatable), e.g. -P lr=0.05."
    ),
    attack: str | None = typer.Option(
        None, "--attack", "-a", help="Attack to evaluate ASR with (never given to the defense)."
    ),
    param: list[str] | None = ParamOpt,
    target: int = typer.Option(0, "--target", help="Target class of the evaluation attack."),
    attack_seed: int | None = typer.Option(
        None, "--attack-seed", help="Seed of the evaluation trigger (default: the model's seed, else 0)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Save the repaired model here (.safetensors)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the clean-sample draw and of the defense."),
    device: str = DeviceOpt,
    data_root: Path | None = DataRootOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Repair MODEL with a model-repair DEFENSE on clean training samples; print BA/ASR before and after."""
    from backdoorkit.checkpoint import save_model
    from backdoorkit.data import split_holdout
    from backdoorkit.defenses import DEFENSES, ModelRepair, build_defense

    cls = DEFENSES.get(defense)
    if not issubclass(cls, ModelRepair):
        raise ConfigError(
            f"defend runs model-repair defenses (scenario S1); {defense} is a {cls.kind} defense"
        )
    d = build_defense(defense, **parse_params(defense_param))
    train_set, test_set = load_splits(dataset, data_root)
    net = _load_checked(model, train_set.num_classes, device)
    _, clean = split_holdout(train_set, _clean_amount(clean_fraction), seed, name="clean")
    atk = _eval_attack(attack, target, param, train_set, _attack_seed(attack_seed, net))

    before = _metrics(net, test_set, atk)
    result = d.repair(net, clean, seed=seed, device=device)  # type: ignore[attr-defined]
    after = _metrics(result.model, test_set, atk)
    summary: dict[str, Any] = {
        "before": before,
        "after": after,
        "defense": d.name,
        "params": d.params.model_dump(mode="json"),
        "info": result.info,
        "seconds": result.seconds,
        "clean_samples": len(clean),
    }
    if out is not None:
        path = save_model(
            result.model,
            out,
            config={
                "command": "defend",
                "defense": d.describe(),
                "source": str(model),
                "dataset": dataset,
                "clean_fraction": clean_fraction,
                "seed": seed,
            },
        )
        summary["out"] = str(path)
    if json_out:
        emit_json(summary)
        return
    console.print(f"[bold]{d.name}[/] on {model.name}: {len(clean)} clean samples, {result.seconds:.1f}s")
    for key in ("layers", "gammas"):
        if result.info.get(key):
            console.print(f"{key}: {result.info[key]}")
    console.print(f"BA  {pct(before['ba'])} % -> {pct(after['ba'])} %")
    if atk is not None:
        console.print(f"ASR {pct(before['asr'])} % -> {pct(after['asr'])} %")
    if out is not None:
        console.print(f"saved {summary['out']}")


def parse_gammas(text: str | None) -> tuple[float, ...]:
    """``"1,0.5,0"`` (commas or spaces) -> ``(1.0, 0.5, 0.0)``; ``None`` -> the default grid."""
    from backdoorkit.analysis import DEFAULT_GAMMAS

    if text is None:
        return DEFAULT_GAMMAS
    try:
        out = tuple(float(t) for t in text.replace(",", " ").split())
    except ValueError:
        raise ConfigError(f"--gammas {text!r}: give numbers separated by commas") from None
    if not out:
        raise ConfigError("--gammas is empty")
    return out


@app.command("scan-skips")
def scan_skips_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="The model (.safetensors + sidecar)."),
    dataset: str = typer.Option("digits", "--dataset", "-d", help="Registered dataset name or path."),
    attack: str = typer.Option(..., "--attack", "-a", help="The attack whose ASR is scanned."),
    param: list[str] | None = ParamOpt,
    target: int = typer.Option(0, "--target"),
    attack_seed: int | None = typer.Option(None, "--attack-seed", help="Trigger seed (default: model's)."),
    gammas: str | None = typer.Option(None, "--gammas", help="Comma-separated grid (default 1.0,0.9,...,0)."),
    skip: list[str] | None = typer.Option(None, "--skip", help="Scan only these skips (repeatable)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for skip_scan.csv / .json / .png."),
    device: str = DeviceOpt,
    data_root: Path | None = DataRootOpt,
    json_out: bool = JsonOpt,
) -> None:
    """BA and ASR of MODEL as each skip connection alone is scaled by gamma (CSV, JSON and PNG)."""
    from backdoorkit.analysis import scan_skips

    train_set, test_set = load_splits(dataset, data_root)
    net = _load_checked(model, train_set.num_classes, device)
    atk = _eval_attack(attack, target, param, train_set, _attack_seed(attack_seed, net))
    scan = scan_skips(net, test_set, atk, parse_gammas(gammas), list(skip) if skip else None)
    scores = scan.scores("official")
    files = scan.save(out, title=f"{model.stem}: {attack} on {test_set.name}", highlight=[scores[0].skip])
    if json_out:
        emit_json(
            {
                **scan.to_dict(),
                "scores": [s.__dict__ for s in scores],
                "files": {k: str(v) for k, v in files.items()},
            }
        )
        return
    console.print(f"baseline BA {pct(scan.baseline['ba'])} %, ASR {pct(scan.baseline['asr'])} %")
    for s in scores:
        console.print(
            f"{s.skip:>14}  critical score {s.score:+.3f} at gamma {s.gamma:g} "
            f"(BA {pct(s.ba)} %, ASR {pct(s.asr)} %)"
        )
    for kind, path in files.items():
        console.print(f"wrote {kind}: {path}")
