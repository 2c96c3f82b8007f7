"""The ``backdoorkit`` command.

User errors end with one line on stderr and exit code 2, never a traceback: a
:class:`~backdoorkit.errors.BackdoorkitError` (unknown names, missing or malformed files, labels out
of range, wrong image sizes, NaN weights) and every click / typer usage error (an unknown option, a
missing argument, a value that does not parse).  Python warnings raised while a command runs are not
printed (a command reports what matters itself, in its own lines).

Options are checked by name and type before a command runs (:func:`harden`, one layer for every
command): float options must be finite; ``--seed`` / ``--attack-seed`` lie in ``[0, 2**32 - 1]``;
``--epochs``, ``--batch-size``, ``--jobs`` and ``--width`` are at least 1 (width at most
:data:`~backdoorkit.models.registry.MAX_WIDTH`); ``--target`` is a class index; ``--device`` names a
device this machine has (:func:`~backdoorkit.device.check_device`).
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import sys
import warnings
from collections.abc import Callable
from typing import Any

import typer
from typer import exceptions as typer_exceptions

try:  # typer >= 0.2x carries its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - typer on top of click
    from click import exceptions as click_exceptions

from backdoorkit.cli.app import app
from backdoorkit.errors import BackdoorkitError, one_line

# every other module of this package defines commands on ``app`` when imported
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("app", "common") and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

MAX_SEED = 2**32 - 1
"""Seeds seed numpy too, whose seeds are 32-bit."""


def _finite(value: Any) -> str | None:
    return (
        None if not isinstance(value, float) or math.isfinite(value) else f"{value!r} is not a finite number"
    )


def _in_range(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, int) and not low <= value <= high:
            return f"{value} is not in the range {low} to {high:,}"
        return None

    return check


def _device(value: Any) -> str | None:
    from backdoorkit.device import check_device

    try:
        check_device(value)
    except BackdoorkitError as exc:
        return str(exc)
    return None


def _int_ranges() -> dict[str, Callable[[Any], str | None]]:
    from backdoorkit.data.limits import MAX_CLASSES
    from backdoorkit.models.registry import MAX_WIDTH

    seed = _in_range(0, MAX_SEED)
    return {
        "seed": seed,
        "attack_seed": seed,
        "epochs": _in_range(0, 100_000),  # 0 only evaluates: train --init (the commands refuse it else)
        "attacker_epochs": _in_range(1, 100_000),
        "batch_size": _in_range(1, 1 << 20),
        "jobs": _in_range(1, 1024),
        "width": _in_range(1, MAX_WIDTH),
        "attacker_width": _in_range(1, MAX_WIDTH),
        "target": _in_range(0, MAX_CLASSES - 1),
        "n": _in_range(1, 1_000_000),
    }


def _with_check(
    original: Callable[..., Any] | None, check: Callable[[Any], str | None]
) -> Callable[..., Any]:
    def callback(ctx: Any, param: Any, value: Any) -> Any:
        if original is not None:
            value = original(ctx, param, value)
        for v in value if isinstance(value, list | tuple) else [value]:
            problem = None if v is None else check(v)
            if problem:
                raise typer.BadParameter(problem, ctx=ctx, param=param)
        return value

    return callback


def harden(command: Any) -> Any:
    """Give every option of ``command`` (and its subcommands) the checks of the module docstring."""
    ranges = _int_ranges()
    todo = [command]
    while todo:
        cmd = todo.pop()
        todo.extend(getattr(cmd, "commands", {}).values())
        for param in cmd.params:
            annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
            check = None
            if annotation is float:
                check = _finite
            elif annotation is int and param.name in ranges:
                check = ranges[param.name]
            elif param.name == "device":
                check = _device
            if check is not None:
                param.callback = _with_check(param.callback, check)
    return command


def _usage_line(exc: Any) -> str:
    where = exc.ctx.command_path if exc.ctx is not None else "backdoorkit"
    return f"{where}: {' '.join(exc.format_message().split())}"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script; always ends with :class:`SystemExit`."""
    command = harden(typer.main.get_command(app))
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rc = command.main(args=args, prog_name="backdoorkit", standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx is not None else "")
        raise SystemExit(0) from None
    except click_exceptions.UsageError as exc:
        print(f"backdoorkit: error: {_usage_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except click_exceptions.ClickException as exc:
        print(f"backdoorkit: error: {' '.join(exc.format_message().split())}", file=sys.stderr)
        raise SystemExit(2) from None
    except (typer_exceptions.Abort, getattr(click_exceptions, "Abort", typer_exceptions.Abort)):
        print("backdoorkit: aborted", file=sys.stderr)
        raise SystemExit(130) from None
    except typer_exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except BackdoorkitError as exc:
        print(f"backdoorkit: error: {one_line(exc, with_type=False, limit=2000)}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(rc if isinstance(rc, int) else 0)


__all__ = ["app", "harden", "main"]
