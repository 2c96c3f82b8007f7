"""Helpers shared by the command modules: console, JSON output, dataset loading with a data root."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console
from torch import nn

from backdoorkit.data import ImageSet, load_dataset
from backdoorkit.device import eval_mode
from backdoorkit.errors import ConfigError, DataError, ModelFileError
from backdoorkit.jsonable import to_jsonable
from backdoorkit.paths import check_writable

console = Console(stderr=False)
err_console = Console(stderr=True)

DataRootOpt = typer.Option(None, "--data-root", help="Directory to search for datasets first.")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ...")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object instead of tables.")
ArchOpt = typer.Option(
    None,
    "--arch",
    help="Architecture of a model file without a sidecar (legacy .pt/.pth, bare .safetensors): a "
    "registered name, torchvision:NAME, timm:NAME or package.module:factory.",
)


EpochLinesOpt = typer.Option(
    None,
    "--epoch-lines",
    min=0,
    help="Seconds between the epoch lines of a long training (model, epoch, loss, time left) on stderr; "
    "0: none. Default: 300 when stderr is not a terminal and --progress is off.",
)


def epoch_lines(label: str, asked: float | None, progress: bool) -> Any:
    """The context a command trains in: epoch lines (:mod:`backdoorkit.train_report`) every ``asked``
    seconds, by default every 300 s when nobody watches a progress bar (a log file, a batch job)."""
    import contextlib
    import sys

    from backdoorkit.train_report import DEFAULT_EVERY, report_training

    every = asked if asked is not None else (None if progress or sys.stderr.isatty() else DEFAULT_EVERY)
    return report_training(label, every) if every else contextlib.nullcontext()


check_output = check_writable
"""Refuse, before any work, an output path that cannot be written (:func:`paths.check_writable`)."""


def load_model_file(
    path: Path, data: ImageSet | None, *, arch: str | None = None, device: str = "cpu"
) -> nn.Module:
    """A model file (``--arch`` for files without a sidecar), checked against ``data`` when given."""
    from backdoorkit.checkpoint import load_model
    from backdoorkit.device import resolve_device

    counts = {"num_classes": data.num_classes, "in_channels": data.channels} if data is not None else {}
    net = load_model(path, arch=arch, device=resolve_device(device), **counts)
    if data is not None:
        check_model_fits(net, data, str(path))
    return net


def check_model_fits(net: nn.Module, data: ImageSet, source: str) -> None:
    """Refuse, in one line, a model that cannot take ``data``'s images or predict its classes.

    Checks the declared ``in_channels`` / ``image_size`` / ``num_classes`` where the model has them,
    then runs a probe batch (eight images, in eval mode, without gradients) through it to catch any
    other mismatch, and requires finite outputs (finite but absurd weights can overflow).
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
            out = net(data.pixels(slice(0, min(8, len(data)))).to(device))
    except (RuntimeError, ValueError, IndexError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise DataError(
            f"{source}: the model cannot take {data.name}'s {c}x{h}x{w} images ({reason})"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != data.num_classes:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelFileError(
            f"{source}: the model outputs {shape}, not [N, {data.num_classes}] for {data.name}"
        )
    if not bool(torch.isfinite(out).all()):
        raise ModelFileError(f"{source}: the model's outputs on {data.name} images are not finite (NaN/inf)")


def load_splits(
    dataset: str, data_root: Path | None, image_size: int | None = None
) -> tuple[ImageSet, ImageSet]:
    """``(train, test)`` of a dataset given by name or path."""
    train = load_dataset(dataset, "train", data_root, image_size=image_size)
    test = load_dataset(dataset, "test", data_root, image_size=image_size)
    if train.image_shape != test.image_shape:
        from backdoorkit.errors import DataError

        raise DataError(f"{dataset}: train images are {train.image_shape} but test images {test.image_shape}")
    return train, test


def emit_json(obj: dict[str, Any]) -> None:
    """Print one JSON object on stdout (NaN becomes null)."""
    typer.echo(json.dumps(to_jsonable(obj), sort_keys=False))


def pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


ParamOpt = typer.Option(
    None, "--param", "-p", help="A method parameter as key=value (repeatable), e.g. -p alpha=0.2."
)


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``["alpha=0.2", "variant=grid"]`` -> ``{"alpha": 0.2, "variant": "grid"}`` (YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"parameter {item!r} is not key=value")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"parameter {item!r}: cannot parse the value") from None
    return out
