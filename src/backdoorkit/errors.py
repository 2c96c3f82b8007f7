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
