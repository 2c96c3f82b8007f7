"""Attacks: the registry and the base classes.  One attack per module; importing this package
registers all of them under their names (``badnets``, ``blended``, ...)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from backdoorkit.attacks.base import Attack, AttackParams, PoisonedSet
from backdoorkit.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack")


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    ATTACKS.add(
        cls.name,
        cls,
        paper=cls.paper,
        label_mode=cls.label_mode,
        default_rate=cls.default_rate,
    )
    return cls


def build_attack(name: str, **params: Any) -> Attack:
    """Instantiate a registered attack with validated parameters."""
    return ATTACKS.get(name)(**params)


# one module per attack; each registers itself on import
def _import_all() -> None:
    """Import every module of this package so each registers itself."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base",) and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()

__all__ = ["ATTACKS", "Attack", "AttackParams", "PoisonedSet", "build_attack", "register_attack"]
