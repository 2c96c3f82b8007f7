"""Defenses: the registry and the four base kinds.  One defense per module; importing this package
registers all of them (grouped by kind in the registry, not in folders)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from backdoorkit.defenses.base import (
    Defense,
    DefenseInputs,
    DefenseParams,
    DefenseResult,
    InputDetector,
    ModelInspector,
    ModelRepair,
    RobustTraining,
    Verdict,
)
from backdoorkit.registry import Registry
from backdoorkit.scenarios import Scenario

DEFENSES: Registry[type[Defense]] = Registry("defense")


def register_defense(cls: type[Defense]) -> type[Defense]:
    """Class decorator: register ``cls`` under ``cls.name`` with its kind and scenarios."""
    DEFENSES.add(
        cls.name, cls, paper=cls.paper, kind=cls.kind, scenarios=tuple(s.value for s in cls.scenarios)
    )
    return cls


def build_defense(name: str, **params: Any) -> Defense:
    return DEFENSES.get(name)(**params)


def _import_all() -> None:
    """Import every module of this package so each registers itself."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base",) and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()

__all__ = [
    "DEFENSES",
    "Defense",
    "DefenseInputs",
    "DefenseParams",
    "DefenseResult",
    "InputDetector",
    "ModelInspector",
    "ModelRepair",
    "RobustTraining",
    "Scenario",
    "Verdict",
    "build_defense",
    "register_defense",
]
