"""``backdoorkit train``: train a (possibly backdoored) model and print BA / ASR."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from torch import nn

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
from backdoorkit.data import ImageSet, parse_amount
from backdoorkit.errors import ConfigError
from backdoorkit.resume import resumable_training

if TYPE_CHECKING:
    from backdoorkit.attacks.base import PoisonedSet


@app.command()
def train(
    dataset: str = typer.Option("digits", "--dataset", "-d", help="Registered dataset name or path."),
    model: str = typer.Option("resnet18", "--model", "-m", help="Registered architecture."),
    width: int | None = typer.Option(None, "--width", help="Base channel count (64 = full ResNet)."),
    epochs: int | None = typer.Option(None, "--epochs"),
    lr: float | None = typer.Option(None, "--lr"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    augment: bool | None = typer.Option(None, "--augment/--no-augment"),
    attack: str | None = typer.Option(None, "--attack", "-a", help="Poison the training set first."),
    target: int | None = typer.Option(None, "--target", help="Target class (default 0, or the preset's)."),
    poison_rate: float | None = typer.Option(None, "--poison-rate", help="Fraction (<1) or count (>=1)."),
    param: list[str] | None = ParamOpt,
    preset: str | None = typer.Option(
        None, "--preset", help="Paper preset NAME or NAME:fast (ssft_paper, ...); explicit options win."
    ),
    init: Path | None = typer.Option(None, "--init", help="Start from these weights (safetensors/.pt)."),
    arch: str | None = ArchOpt,
    out: Path | None = typer.Option(None, "--out", "-o", help="Save the model here (.safetensors)."),
    snapshots: Path | None = typer.Option(
        None,
        "--snapshots",
        help="Folder for a training snapshot each epoch: the same command run again resumes from the "
        "last one (the folder is removed when training ends).",
    ),
    seed: int = typer.Option(0, "--seed"),
    device: str = DeviceOpt,
    data_root: Path | None = DataRootOpt,
    progress: bool = typer.Option(False, "--progress/--no-progress"),
    epoch_lines_every: float | None = EpochLinesOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Train MODEL on DATASET (optionally poisoned by ATTACK); print BA and ASR."""
    from backdoorkit.attacks import build_attack
    from backdoorkit.checkpoint import save_model
    from backdoorkit.metrics import backdoor_metrics
    from backdoorkit.pipeline import make_model, recipe_for, train_victim
    from backdoorkit.presets import preset_attack, preset_train

    if attack is None:
        given = [
            n for n, v in (("--target", target), ("--poison-rate", poison_rate), ("-p/--param", param)) if v
        ]
        if given or target is not None:
            raise ConfigError(f"{', '.join(given or ['--target'])}: set(s) the attack; give --attack too")
    if epochs == 0 and init is None:
        raise ConfigError("--epochs 0 would leave the model untrained; give --init to evaluate a model")
    check_output(out, "--out")
    if snapshots is not None and snapshots.exists() and not snapshots.is_dir():
        raise ConfigError(f"--snapshots {snapshots}: not a folder")
    train_set, test_set = load_splits(dataset, data_root)
    atk = None
    poisoned: PoisonedSet | ImageSet = train_set
    poison_info: dict[str, object] = {}
    if attack is not None:
        params = parse_params(param)
        if poison_rate is not None:
            params["rate"] = parse_amount(poison_rate, "--poison-rate")
        atk = build_attack(attack, **preset_attack(preset, attack, target, params))
        ps = atk.poison(train_set, seed=seed)
        poisoned, train_set = ps, ps.data
        poison_info = {"poisoned": ps.count, **ps.info}
    cfg = recipe_for(
        train_set,
        **preset_train(preset, epochs=epochs, lr=lr, batch_size=batch_size, augment=augment),
        seed=seed,
        device=device,
        progress=progress and not json_out,
    )
    if init is not None:
        start_net = load_model_file(init, train_set, arch=arch)

        def factory() -> nn.Module:
            return start_net
    else:

        def factory() -> nn.Module:
            return make_model(model, train_set, width=width, seed=seed)

    resumed = snapshots is not None and any(snapshots.glob("fit-*.pt"))
    start = time.perf_counter()
    label = f"train {model} on {dataset}" + (f" poisoned by {atk.name}" if atk is not None else "")
    with (
        resumable_training(snapshots) if snapshots is not None else contextlib.nullcontext(),
        epoch_lines(label, epoch_lines_every, cfg.progress),
    ):
        net = train_victim(atk, factory, poisoned, cfg)
    seconds = time.perf_counter() - start
    # a resumed run trained only the epochs that were left: no throughput figure for it
    images_per_second = cfg.epochs * len(train_set) / seconds if seconds > 0 and not resumed else float("nan")
    metrics = backdoor_metrics(net, test_set, atk)
    summary = {
        **metrics,
        "seconds": seconds,
        "images_per_second": images_per_second,
        "epochs": cfg.epochs,
        "resumed": resumed,
        **({"poison": poison_info} if poison_info else {}),
    }
    if out is not None:
        config = {
            "train": cfg.model_dump(),
            "command": "train",
            "dataset": dataset,
            "attack": atk.describe() if atk else None,
            "seed": seed,
        }
        path = save_model(net, out, classes=train_set.classes, config=config)
        summary["out"] = str(path)
    if json_out:
        emit_json(summary)
        return
    speed = (
        f"{seconds:.1f}s, resumed from a snapshot"
        if resumed
        else f"{seconds:.1f}s, {images_per_second:.0f} img/s"
    )
    console.print(f"[bold]{model}[/] on {train_set.name}: {speed}")
    console.print(f"BA  {pct(metrics['ba'])} %")
    if atk is not None:
        console.print(f"ASR {pct(metrics['asr'])} % (quantised trigger {pct(metrics['asr_quantized'])} %)")
    if out is not None:
        console.print(f"saved {summary['out']}")
