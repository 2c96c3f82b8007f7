"""``backdoorkit train``: train a (possibly backdoored) model and print BA / ASR."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import typer
from torch import nn

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
from backdoorkit.data import ImageSet, parse_amount
from backdoorkit.device import eval_mode
from backdoorkit.errors import DataError, ModelFileError

if TYPE_CHECKING:
    from backdoorkit.attacks.base import PoisonedSet


def check_model_fits(net: nn.Module, data: ImageSet, source: str) -> None:
    """Refuse, in one line, a model that cannot take ``data``'s images or predict its classes.

    Checks the declared ``in_channels`` / ``image_size`` / ``num_classes`` where the model has them,
    then runs one image through it (in eval mode, without gradients) to catch any other mismatch.
    """
    c, h, w = data.image_shape
    want_c = getattr(net, "in_channels", None)
    if isinstance(want_c, int) and want_c != c:
        raise DataError(
            f"{source}: the model takes {want_c}-channel images but {data.name} has {c}-channel images"
        )
    size = getattr(net, "image_size", None)
    if isinstance(size, int) and (h, w) != (size, size):
        raise DataError(f"{source}: the model takes {size}x{size} images but {data.name} has {h}x{w} images")
    classes = getattr(net, "num_classes", None)
    if isinstance(classes, int) and classes != data.num_classes:
        raise ModelFileError(f"{source}: model has {classes} classes, dataset {data.name} {data.num_classes}")
    if len(data) == 0:
        return
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad(), eval_mode(net):
            out = net(data.pixels(slice(0, 1)).to(device))
    except (RuntimeError, ValueError, IndexError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise DataError(
            f"{source}: the model cannot take {data.name}'s {c}x{h}x{w} images ({reason})"
        ) from None
    if out.dim() != 2 or out.shape[1] != data.num_classes:
        raise ModelFileError(
            f"{source}: the model outputs shape {list(out.shape)}, "
            f"not [N, {data.num_classes}] for {data.name}"
        )


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
    target: int = typer.Option(0, "--target"),
    poison_rate: float | None = typer.Option(None, "--poison-rate", help="Fraction (<1) or count (>=1)."),
    param: list[str] | None = ParamOpt,
    init: Path | None = typer.Option(None, "--init", help="Start from these weights (safetensors/.pt)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Save the model here (.safetensors)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = DeviceOpt,
    data_root: Path | None = DataRootOpt,
    progress: bool = typer.Option(False, "--progress/--no-progress"),
    json_out: bool = JsonOpt,
) -> None:
    """Train MODEL on DATASET (optionally poisoned by ATTACK); print BA and ASR."""
    from backdoorkit.attacks import build_attack
    from backdoorkit.checkpoint import load_model, save_model
    from backdoorkit.metrics import backdoor_metrics
    from backdoorkit.pipeline import make_model, recipe_for, train_victim

    train_set, test_set = load_splits(dataset, data_root)
    atk = None
    poisoned: PoisonedSet | ImageSet = train_set
    poison_info: dict[str, object] = {}
    if attack is not None:
        params = parse_params(param)
        if poison_rate is not None:
            params["rate"] = parse_amount(poison_rate, "--poison-rate")
        atk = build_attack(attack, target=target, **params)
        ps = atk.poison(train_set, seed=seed)
        poisoned, train_set = ps, ps.data
        poison_info = {"poisoned": ps.count, **ps.info}
    cfg = recipe_for(
        train_set,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        augment=augment,
        seed=seed,
        device=device,
        progress=progress and not json_out,
    )
    if init is not None:
        start_net = load_model(init)
        check_model_fits(start_net, train_set, str(init))

        def factory() -> nn.Module:
            return start_net
    else:

        def factory() -> nn.Module:
            return make_model(model, train_set, width=width, seed=seed)

    start = time.perf_counter()
    net = train_victim(atk, factory, poisoned, cfg)
    seconds = time.perf_counter() - start
    images_per_second = cfg.epochs * len(train_set) / seconds if seconds > 0 else float("nan")
    metrics = backdoor_metrics(net, test_set, atk)
    summary = {
        **metrics,
        "seconds": seconds,
        "images_per_second": images_per_second,
        "epochs": cfg.epochs,
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
    speed = f"{seconds:.1f}s, {images_per_second:.0f} img/s"
    console.print(f"[bold]{model}[/] on {train_set.name}: {speed}")
    console.print(f"BA  {pct(metrics['ba'])} %")
    if atk is not None:
        console.print(f"ASR {pct(metrics['asr'])} % (quantised trigger {pct(metrics['asr_quantized'])} %)")
    if out is not None:
        console.print(f"saved {summary['out']}")
