"""The ``backdoorkit`` command.

User errors (:class:`~backdoorkit.errors.BackdoorkitError`: unknown names, missing or malformed
files, labels out of range, wrong image sizes, NaN weights) end with one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

from backdoorkit.cli.app import app
from backdoorkit.errors import BackdoorkitError

# every other module of this package defines commands on ``app`` when imported
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("app", "common") and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    try:
        app(args=argv, standalone_mode=True)
    except BackdoorkitError as exc:
        print(f"backdoorkit: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = ["app", "main"]
