"""``backdoorkit attack``: train a backdoored model and a clean one the same way, report BA / ASR;
``backdoorkit triggers``: draw a gallery of clean / poisoned / difference images for the attacks.

Both commands pass an attacker model to the attacks that take one (``setup(..., model=...)``:
label-consistent, Trojan, Smooth): the model given with ``--attacker-model`` (a checkpoint), or, for
``triggers``, a quickly trained small ResNet-18; without ``--attacker-model`` ``attack`` lets such an
attack train its own (its documented default).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import typer
from torch import nn

from backdoorkit.attacks.base import Attack
from backdoorkit.cli.app import app
from backdoorkit.cli.common import (
    ArchOpt,
    DataRootOpt,
    DeviceOpt,
    EpochLinesOpt,
    JsonOpt,
    ParamOpt,
    check_output,
    console,
    emit_json,
    epoch_lines,
    load_model_file,
    load_splits,
    parse_params,
    pct,
)
from backdoorkit.data import parse_amount
from backdoorkit.data.imageset import ImageSet
from backdoorkit.errors import ConfigError
from backdoorkit.train import TrainConfig


def takes_model(atk: Attack) -> bool:
    """Whether the attack's ``setup`` accepts an attacker model (``model=``)."""
    return "model" in inspect.signature(atk.setup).parameters


def setup_kwargs(atk: Attack, attacker: nn.Module | None) -> dict[str, Any]:
    """``{"model": attacker}`` for attacks that take an attacker model, else ``{}``."""
    return {"model": attacker} if attacker is not None and takes_model(atk) else {}


def summarize_info(info: dict[str, Any]) -> dict[str, Any]:
    """Poisoning info for printing: long index lists become their lengths."""
    return {k: (len(v) if isinstance(v, list | tuple) and len(v) > 16 else v) for k, v in info.items()}


def run_attack(
    atk: Attack,
    train: ImageSet,
    test: ImageSet,
    *,
    arch: str,
    cfg: TrainConfig,
    seed: int = 0,
    width: int | None = None,
    attacker: nn.Module | None = None,
    clean_model: nn.Module | None = None,
) -> tuple[dict[str, Any], nn.Module, nn.Module]:
    """Poison ``train``, train a backdoored and (unless given) a clean model with the same recipe and
    seed, and measure them.  Returns ``(summary, backdoored model, clean model)``; the summary has
    ``ba``, ``asr``, ``asr_quantized``, ``clean_ba``, ``clean_asr`` (fractions), the poison count and
    info, and training seconds."""
    from backdoorkit.metrics import attack_success_rate, backdoor_metrics, benign_accuracy
    from backdoorkit.pipeline import train_model

    ps = atk.poison(train, seed=seed, **setup_kwargs(atk, attacker))
    bd_model, bd_seconds = train_model(arch, ps, cfg, seed=seed, width=width, attack=atk)
    clean_seconds = 0.0
    if clean_model is None:
        clean_model, clean_seconds = train_model(arch, train, cfg, seed=seed, width=width)
    metrics = backdoor_metrics(bd_model, test, atk)
    summary: dict[str, Any] = {
        **metrics,
        "clean_ba": benign_accuracy(clean_model, test),
        "clean_asr": attack_success_rate(clean_model, test, atk),
        "attack": atk.name,
        "label_mode": atk.label_mode,
        "params": atk.describe(),
        "poisoned": ps.count,
        "poison": summarize_info(ps.info),
        "seconds": bd_seconds,
        "clean_seconds": clean_seconds,
        "epochs": cfg.epochs,
    }
    return summary, bd_model, clean_model


def load_attacker(
    path: Path | None, device: str, *, arch: str | None = None, data: ImageSet | None = None
) -> nn.Module | None:
    """The attacker model of ``--attacker-model`` (``--arch`` for files without a sidecar), checked
    against ``data`` when given."""
    if path is None:
        return None
    return load_model_file(path, data, arch=arch, device=device).eval()


@app.command("attack")
def attack_cmd(
    attack: str = typer.Option(..., "--attack", "-a", help="A registered attack (see the registry)."),
    dataset: str = typer.Option("digits", "--dataset", "-d", help="Registered dataset name or path."),
    model: str = typer.Option("resnet18", "--model", "-m", help="Registered architecture."),
    param: list[str] | None = ParamOpt,
    preset: str | None = typer.Option(
        None, "--preset", help="Paper preset NAME or NAME:fast (ssft_paper, ...); explicit options win."
    ),
    target: int | None = typer.Option(None, "--target", help="Target class (default 0, or the preset's)."),
    poison_rate: float | None = typer.Option(None, "--poison-rate", help="Fraction (<1) or count (>=1)."),
    width: int | None = typer.Option(None, "--width", help="Base channel count (64 = full ResNet)."),
    epochs: int | None = typer.Option(None, "--epochs"),
    lr: float | None = typer.Option(None, "--lr"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    augment: bool | None = typer.Option(None, "--augment/--no-augment"),
    attacker_model: Path | None = typer.Option(
        None, "--attacker-model", help="Checkpoint of the attacker's model (attacks that use one)."
    ),
    arch: str | None = ArchOpt,
    out: Path | None = typer.Option(None, "--out", "-o", help="Save the backdoored model (.safetensors)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = DeviceOpt,
    data_root: Path | None = DataRootOpt,
    progress: bool = typer.Option(False, "--progress/--no-progress"),
    epoch_lines_every: float | None = EpochLinesOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Train a backdoored MODEL on DATASET poisoned by ATTACK and a clean one the same way; print BA,
    ASR (float and quantised trigger) and the clean model's BA."""
    from backdoorkit.attacks import build_attack
    from backdoorkit.pipeline import recipe_for
    from backdoorkit.presets import preset_attack, preset_train

    if epochs == 0:
        raise ConfigError("--epochs 0 would leave both models untrained; give at least 1")
    check_output(out, "--out")
    if arch is not None and attacker_model is None:
        raise ConfigError("--arch describes --attacker-model; give --attacker-model too")
    train_set, test_set = load_splits(dataset, data_root)
    params = parse_params(param)
    if poison_rate is not None:
        params["rate"] = parse_amount(poison_rate, "--poison-rate")
    atk = build_attack(attack, **preset_attack(preset, attack, target, params))
    attacker = load_attacker(attacker_model, device, arch=arch, data=train_set)
    if attacker is not None and not takes_model(atk):
        raise ConfigError(f"--attacker-model: attack {atk.name!r} does not use an attacker model")
    cfg = recipe_for(
        train_set,
        **preset_train(preset, epochs=epochs, lr=lr, batch_size=batch_size, augment=augment),
        seed=seed,
        device=device,
        progress=progress and not json_out,
    )
    with epoch_lines(f"attack {model} on {dataset} with {atk.name}", epoch_lines_every, cfg.progress):
        summary, bd_model, _ = run_attack(
            atk, train_set, test_set, arch=model, cfg=cfg, seed=seed, width=width, attacker=attacker
        )
    summary.update({"dataset": dataset, "model": model, "width": width, "seed": seed})
    if out is not None:
        from backdoorkit.checkpoint import save_model

        path = save_model(
            bd_model,
            out,
            classes=train_set.classes,
            config={
                "train": cfg.model_dump(),
                "command": "attack",
                "dataset": dataset,
                "attack": atk.describe(),
                "seed": seed,
            },
        )
        summary["out"] = str(path)
    if json_out:
        emit_json(summary)
        return
    console.print(
        f"[bold]{atk.name}[/] ({atk.label_mode}-label, {summary['poisoned']} poisoned rows) "
        f"against {model} on {train_set.name}, {cfg.epochs} epochs"
    )
    for key, value in summary["poison"].items():
        if key != "requested":
            console.print(f"  {key}: {value}")
    console.print(f"BA        {pct(summary['ba'])} %   (clean model {pct(summary['clean_ba'])} %)")
    asr, asr_q = summary["asr"], summary["asr_quantized"]
    same = math.isclose(asr, asr_q, abs_tol=1e-9) if not (math.isnan(asr) or math.isnan(asr_q)) else False
    if same:
        console.print(f"ASR       {pct(asr)} %   (clean model {pct(summary['clean_asr'])} %)")
    else:
        console.print(
            f"ASR       {pct(asr)} % float trigger, {pct(asr_q)} % quantised trigger "
            f"(clean model {pct(summary['clean_asr'])} %)"
        )
    if out is not None:
        console.print(f"saved {summary['out']}")


def quick_attacker(train: ImageSet, *, seed: int, width: int, epochs: int, device: str) -> nn.Module:
    """A small clean ResNet-18 for the attacks that need an attacker model (gallery only)."""
    from backdoorkit.pipeline import recipe_for, train_model

    cfg = recipe_for(train, epochs=epochs, seed=seed, device=device)
    net, _ = train_model("resnet18", train, cfg, seed=seed, width=width)
    return net.eval()


@app.command()
def triggers(
    out: Path = typer.Option(..., "--out", "-o", help="The PNG to write."),
    dataset: str = typer.Option("digits", "--dataset", "-d", help="Registered dataset name or path."),
    attacks: str | None = typer.Option(None, "--attacks", help="Comma-separated attacks (default: all)."),
    n: int = typer.Option(4, "--n", min=1, help="Images per attack."),
    target: int = typer.Option(0, "--target"),
    seed: int = typer.Option(0, "--seed"),
    attacker_model: Path | None = typer.Option(
        None, "--attacker-model", help="Checkpoint of the attacker's model (default: train a small one)."
    ),
    arch: str | None = ArchOpt,
    attacker_width: int = typer.Option(8, "--attacker-width", help="Width of the quick attacker model."),
    attacker_epochs: int = typer.Option(4, "--attacker-epochs", help="Epochs of the quick attacker model."),
    device: str = DeviceOpt,
    data_root: Path | None = DataRootOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Draw clean / poisoned / amplified-difference images of every attack (or those listed) into
    one PNG; poisoned images are the training rows the victim would receive."""
    from backdoorkit.attacks import ATTACKS, build_attack
    from backdoorkit.viz.triggers import draw_gallery, poisoned_examples

    check_output(out, "--out")
    if arch is not None and attacker_model is None:
        raise ConfigError("--arch describes --attacker-model; give --attacker-model too")
    train_set, _ = load_splits(dataset, data_root)
    names = [a.strip() for a in attacks.split(",") if a.strip()] if attacks else ATTACKS.names()
    built = [build_attack(name, target=target) for name in names]
    attacker = load_attacker(attacker_model, device, arch=arch, data=train_set)
    if attacker is None and any(takes_model(a) for a in built):
        attacker = quick_attacker(
            train_set, seed=seed, width=attacker_width, epochs=attacker_epochs, device=device
        )
    rows = {}
    for atk in built:
        rows[atk.name] = poisoned_examples(atk, train_set, n, seed=seed, **setup_kwargs(atk, attacker))
    path = draw_gallery(rows, out, title=f"triggers on {train_set.name} (target {target}, seed {seed})")
    if json_out:
        emit_json({"out": str(path), "attacks": list(rows), "n": n})
        return
    console.print(f"wrote {path} ({len(rows)} attacks x {n} images)")
