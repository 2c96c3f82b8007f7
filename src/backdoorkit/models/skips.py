"""Addressable skip connections.

Every residual addition in our models goes through a :class:`Skip` module that computes

    out = beta * branch + gamma * shortcut

with ``gamma = beta = 1`` by default (then it is exactly ``branch + shortcut``, bit for bit).
``gamma = 0`` removes the skip, ``0 < gamma < 1`` suppresses it (SSFT, Yang et al. 2023), negative
values invert it (BadRes, ``f(x) - 0.5 x``), and ``beta`` scales the residual branch instead (the
``x - beta f(x)`` comparison structure of the BadRes paper).

A skip is addressed by a stable name derived from where its module sits: the module path without a
trailing ``.skip`` / ``_skip`` (``layer2.1`` in ResNet-18, ``block3.1`` in WRN, ``blocks.3.attn`` and
``blocks.3.mlp`` in our ViT).  Models we did not write get the same modules from
:func:`backdoorkit.models.fx_skips.attach_skips`.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from backdoorkit.errors import ConfigError, UnknownNameError


class Skip(nn.Module):
    """The merge of a residual branch with its shortcut: ``beta * branch + gamma * shortcut``."""

    def __init__(self, gamma: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.beta = float(beta)

    def forward(self, branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if self.beta != 1.0:
            branch = branch * self.beta
        if self.gamma == 1.0:
            return branch + shortcut
        if self.gamma == 0.0:
            return branch
        return branch + self.gamma * shortcut

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, beta={self.beta:g}"


def _skip_name(path: str) -> str:
    for suffix in (".skip", "_skip"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def skips(model: nn.Module) -> OrderedDict[str, Skip]:
    """Ordered mapping from skip name to its :class:`Skip` module (in module-registration order)."""
    return OrderedDict(
        (_skip_name(path), module) for path, module in model.named_modules() if isinstance(module, Skip)
    )


def _unknown(model: nn.Module, name: str) -> str:
    names = list(skips(model))
    if not names:
        return f"model {type(model).__name__} has no addressable skip connections (try attach_skips)"
    return f"unknown skip {name!r}; this model has: {', '.join(names)}"


def _resolve(model: nn.Module, names: str | Iterable[str]) -> list[str]:
    table = skips(model)
    if isinstance(names, str):
        names = list(table) if names == "all" else [names]
    out = []
    for n in names:
        if n not in table:
            raise UnknownNameError(_unknown(model, n))
        out.append(n)
    return out


def _check_gamma(gamma: float) -> float:
    g = float(gamma)
    if g != g or g in (float("inf"), float("-inf")):
        raise ConfigError(f"gamma must be finite, got {gamma}")
    return g


def set_gamma(model: nn.Module, names: str | Iterable[str], gamma: float) -> None:
    """Set ``gamma`` on the named skip(s); ``"all"`` addresses every skip."""
    g = _check_gamma(gamma)
    table = skips(model)
    for n in _resolve(model, names):
        table[n].gamma = g


def set_gammas(model: nn.Module, gammas: Mapping[str, float]) -> None:
    """Set several skips at once from a ``{name: gamma}`` mapping."""
    for name, g in gammas.items():
        set_gamma(model, name, g)


def get_gammas(model: nn.Module, *, only_changed: bool = True) -> dict[str, float]:
    """``{name: gamma}`` of the skips (by default only those not at 1)."""
    return {n: m.gamma for n, m in skips(model).items() if not only_changed or m.gamma != 1.0}


def get_betas(model: nn.Module, *, only_changed: bool = True) -> dict[str, float]:
    return {n: m.beta for n, m in skips(model).items() if not only_changed or m.beta != 1.0}


@contextlib.contextmanager
def scaled_skips(
    model: nn.Module, names: str | Iterable[str] | Mapping[str, float], gamma: float | None = None
) -> Iterator[nn.Module]:
    """Temporarily scale skips: ``with scaled_skips(m, "layer3.1", 0.0): ...`` or with a mapping."""
    if isinstance(names, Mapping):
        plan = {n: _check_gamma(g) for n, g in names.items()}
        _resolve(model, list(plan))
    else:
        if gamma is None:
            raise ConfigError("scaled_skips needs a gamma when given skip names")
        plan = dict.fromkeys(_resolve(model, names), _check_gamma(gamma))
    table = skips(model)
    saved = {n: table[n].gamma for n in plan}
    try:
        for n, g in plan.items():
            table[n].gamma = g
        yield model
    finally:
        for n, g in saved.items():
            table[n].gamma = g


def block_path(name: str) -> str:
    """The module path of the residual block a skip belongs to.

    Skip names are chosen so that this is the name itself: ``layer3.1`` is the BasicBlock,
    ``blocks.3.attn`` the attention module whose output the skip adds to its input.
    """
    return name


def stage_path(name: str) -> str:
    """The enclosing stage of a skip: ``layer3.1`` -> ``layer3``; ``blocks.3.attn`` -> ``blocks.3``."""
    head, _, _ = name.rpartition(".")
    return head or name
