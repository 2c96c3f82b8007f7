"""Helpers shared by the command modules: console, JSON output, dataset loading with a data root."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from backdoorkit.data import ImageSet, load_dataset
from backdoorkit.jsonable import to_jsonable

console = Console(stderr=False)
err_console = Console(stderr=True)

DataRootOpt = typer.Option(None, "--data-root", help="Directory to search for datasets first.")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ...")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object instead of tables.")


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

    from backdoorkit.errors import ConfigError

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
