"""User-facing errors.

Everything a user can get wrong (an unknown name, a missing or malformed file, a label out of range,
a wrong image size, NaN weights) raises a subclass of :class:`BackdoorkitError`.  The CLI turns these
into one line on stderr and exit code 2; library callers can catch them as ordinary exceptions.
"""

from __future__ import annotations


class BackdoorkitError(Exception):
    """Base class for errors caused by the user's input rather than by a bug."""


class UnknownNameError(BackdoorkitError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(BackdoorkitError, ValueError):
    """A dataset file or tensor is missing, malformed or inconsistent."""


class ModelFileError(BackdoorkitError, ValueError):
    """A model file is missing, malformed, unsafe (needs pickle) or holds non-finite weights."""


class ConfigError(BackdoorkitError, ValueError):
    """A parameter or configuration value is out of its allowed range."""


class ScenarioError(BackdoorkitError, ValueError):
    """A defense was asked to run in a scenario that does not give it what it needs."""


def one_line(exc: BaseException, *, with_type: bool = True, limit: int = 300) -> str:
    """An exception as one line of at most ``limit`` characters (``"Type: message"`` by default).

    The one formatting of errors for people: CLI messages, failed cells in the results database,
    wrapped library errors.  White space (newlines included) is folded.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    if with_type:
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_message(exc: Exception) -> str:
    """The first error of a pydantic ``ValidationError`` as ``"field.path: message"`` (else ``str``)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return one_line(exc, with_type=False)
    found = errors()
    if not found:
        return one_line(exc, with_type=False)
    err = found[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def config_error(owner: str, exc: Exception) -> ConfigError:
    """A :class:`ConfigError` ``"owner: field: message"`` from a validation error."""
    return ConfigError(f"{owner}: {validation_message(exc)}")
