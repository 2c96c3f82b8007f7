"""One JSON sanitiser for everything the toolbox writes (sidecars, cache metadata, the results
database, ``--json`` output).

:func:`to_jsonable` relies on pydantic's ``to_jsonable_python`` for the standard types (models,
dataclasses, paths, enums, sets, bytes ...) and adds what JSON cannot hold: non-finite floats become
``None``, tensors and arrays become lists (or a short summary when large), anything unknown its ``str``.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic_core import to_jsonable_python

MAX_ARRAY = 4096
"""Tensors / arrays with more elements are summarised as ``"<array shape [...]>"``."""


def _fallback(obj: Any) -> Any:
    if hasattr(obj, "tolist") and hasattr(obj, "shape"):  # torch tensor / numpy array
        size = math.prod(int(d) for d in obj.shape)
        return f"<array shape {list(obj.shape)}>" if size > MAX_ARRAY else obj.tolist()
    if hasattr(obj, "item"):
        try:
            return obj.item()
        except (TypeError, ValueError):
            pass
    return str(obj)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def to_jsonable(obj: Any) -> Any:
    """A JSON-ready copy of ``obj`` (see the module docstring); never raises for odd values."""
    return _finite(to_jsonable_python(obj, fallback=_fallback, serialize_unknown=True))
