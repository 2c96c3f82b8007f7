"""The ``backdoorkit`` command.

User errors (:class:`~backdoorkit.errors.BackdoorkitError`: unknown names, missing or malformed
files, labels out of range, wrong image sizes, NaN weights) end with one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

from backdoorkit.cli.app import app
from backdoorkit.errors import BackdoorkitError

# command modules register themselves on ``app`` when imported
COMMAND_MODULES = ("info", "train")
for _name in COMMAND_MODULES:
    importlib.import_module(f"backdoorkit.cli.{_name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    try:
        app(args=argv, standalone_mode=True)
    except BackdoorkitError as exc:
        print(f"backdoorkit: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = ["app", "main"]
