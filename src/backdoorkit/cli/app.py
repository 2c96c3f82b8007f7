"""The typer application shared by every command module."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="backdoorkit",
    help="Attack, defend, inspect and benchmark backdoors in image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
