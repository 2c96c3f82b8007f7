"""``backdoorkit datasets | models | skips``: what is available."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from backdoorkit.cli.app import app
from backdoorkit.cli.common import DataRootOpt, JsonOpt, console, emit_json
from backdoorkit.data import available, data_roots


@app.command()
def datasets(data_root: Path | None = DataRootOpt, json_out: bool = JsonOpt) -> None:
    """List the datasets that can be loaded now, where from, and their sizes.

    Registered datasets are searched under the data roots (``--data-root``, ``$BACKDOORKIT_DATA``,
    the standard folders); sizes come from file headers and label lists where the format allows,
    so listing does not decode images.  A dataset whose files are present but unreadable is listed
    with the reason and no sizes.  A ``--data-root`` that is not an existing folder is an error.
    """
    rows = available(data_root)
    if json_out:
        emit_json(
            {
                "roots": [str(r) for r in data_roots(data_root)],
                "datasets": [{"name": n, "where": w, "train": a, "test": b} for n, w, a, b in rows],
            }
        )
        return
    table = Table(title="datasets")
    for col in ("name", "where", "train", "test"):
        table.add_column(col)
    for name, where, n_train, n_test in rows:
        table.add_row(name, where, *("-" if n is None else str(n) for n in (n_train, n_test)))
    console.print(table)
    console.print("searched: " + (", ".join(str(r) for r in data_roots(data_root)) or "no data roots"))


@app.command()
def models(json_out: bool = JsonOpt) -> None:
    """List the registered model architectures and their skip connections."""
    from backdoorkit.models import MODELS, build_model, skips

    rows = []
    for entry in MODELS.entries():
        kw = {"depth": 2} if entry.name.startswith("vit") else {}
        n_skips = len(skips(build_model(entry.name, **kw))) if not kw else "2 per block"
        rows.append(
            {"name": entry.name, "args": list(entry.meta["args"]), "skips": n_skips, "paper": entry.paper}
        )
    if json_out:
        emit_json({"models": rows})
        return
    table = Table(title="models")
    for col in ("name", "arguments", "skips", "paper"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], ", ".join(r["args"]), str(r["skips"]), r["paper"])
    console.print(table)


@app.command("skips")
def skips_cmd(
    arch: str = typer.Option(..., "--arch", help="A registered architecture."),
    width: int | None = typer.Option(None, "--width"),
    json_out: bool = JsonOpt,
) -> None:
    """List the addressable skip connections of an architecture."""
    from backdoorkit.models import build_model, skips
    from backdoorkit.models.registry import model_args

    kwargs = {"width": width} if width is not None and "width" in model_args(arch) else {}
    model = build_model(arch, **kwargs)
    names = list(skips(model))
    if json_out:
        emit_json({"arch": arch, "skips": names})
        return
    for n in names:
        typer.echo(n)
    if not names:
        typer.echo(f"{arch} has no skip connections")
