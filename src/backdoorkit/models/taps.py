"""Taps into a model: read the activations of named submodules, or swap submodules in place.

* :func:`capture` records the outputs of named submodules on every forward pass (the attention maps
  of NAD, Li et al. ICLR 2021; the last-layer activations of fine-pruning, Liu et al. RAID 2018; the
  features Neural Cleanse and spectral signatures look at).  Hooks are removed when the ``with``
  block ends, also when it ends with an error.
* :func:`replace_modules` swaps every submodule a predicate selects for what a factory builds (ANP's
  noisy batch norm, Wu & Wang NeurIPS 2021; opacus' BatchNorm -> GroupNorm for DP-SGD).

Names are module paths as :meth:`torch.nn.Module.named_modules` spells them (``layer2.1``,
``blocks.3.attn``); an unknown name raises :class:`~backdoorkit.errors.ConfigError` listing close ones.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from backdoorkit.errors import ConfigError


def resolve_modules(model: nn.Module, names: str | Iterable[str]) -> dict[str, nn.Module]:
    """``{name: submodule}`` for the given module paths (a single string is one name), in order."""
    wanted = [names] if isinstance(names, str) else list(names)
    table = dict(model.named_modules())
    found: dict[str, nn.Module] = {}
    for name in wanted:
        if name not in table:
            raise ConfigError(unknown_module_message(model, name, table))
        found[name] = table[name]
    return found


def unknown_module_message(model: nn.Module, name: str, table: Iterable[str] | None = None) -> str:
    """One line: ``name`` is no submodule of ``model``, with the closest existing paths."""
    paths = [p for p in (table if table is not None else dict(model.named_modules())) if p]
    close = difflib.get_close_matches(name, paths, n=5, cutoff=0.5)
    hint = f"; close names: {', '.join(close)}" if close else f"; it has {len(paths)} submodules"
    return f"{type(model).__name__} has no submodule {name!r}{hint}"


@contextlib.contextmanager
def capture(
    model: nn.Module, names: str | Iterable[str], *, detach: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of each named submodule on every forward pass inside the ``with`` block.

    ``with capture(model, ["layer3", "layer4"]) as acts: model(x)`` leaves ``acts["layer3"]`` etc.
    holding the latest outputs (still attached to the autograd graph unless ``detach=True``, so a
    loss such as NAD's attention distillation can back-propagate through them).  A module called
    several times per forward keeps its last output.

    Raises:
        ConfigError: a name is not a submodule of ``model`` (nothing is hooked then).
    """
    modules = resolve_modules(model, names)
    acts: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            acts[name] = output.detach() if detach and isinstance(output, torch.Tensor) else output

        return hook

    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield acts
    finally:
        for handle in handles:
            handle.remove()


def replace_modules(
    model: nn.Module,
    predicate: Callable[[str, nn.Module], bool],
    factory: Callable[[str, nn.Module], nn.Module],
) -> list[str]:
    """Replace, in place, every submodule ``m`` at path ``name`` with ``predicate(name, m)`` true by
    ``factory(name, m)``; returns the replaced paths in module order.

    The model itself is never replaced, and the insides of a replaced module are not visited (the
    factory decides what happens to them).  Example: every ``BatchNorm2d`` to ``GroupNorm``::

        replace_modules(model, lambda n, m: isinstance(m, nn.BatchNorm2d),
                        lambda n, m: nn.GroupNorm(1, m.num_features))

    Raises:
        ConfigError: the factory returned something that is not an ``nn.Module``.
    """
    chosen: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(done + ".") for done in chosen):
            continue
        if predicate(name, module):
            chosen.append(name)
    for name in chosen:
        parent_path, _, field = name.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        old = parent.get_submodule(field)
        new = factory(name, old)
        if not isinstance(new, nn.Module):
            raise ConfigError(f"replace_modules: the factory returned {type(new).__name__} for {name!r}")
        new.train(old.training)
        ref = next(itertools.chain(old.parameters(), old.buffers()), None)
        if ref is not None:
            new.to(ref.device)
        setattr(parent, field, new)
    return chosen


__all__ = ["capture", "replace_modules", "resolve_modules", "unknown_module_message"]
