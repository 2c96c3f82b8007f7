"""Helpers shared by the attacks on the model's structure (BadRes, TrojanNet, latent backdoor,
pruning-aware attack): which residual a layer index names, which block a stem ends at, and the
clean rows of a poisoned set.  Private: nothing here is registered."""

from __future__ import annotations

from typing import Literal

from torch import nn

from backdoorkit.attacks.base import PoisonedSet
from backdoorkit.data.imageset import ImageSet
from backdoorkit.errors import ConfigError, UnknownNameError
from backdoorkit.models.skips import skips
from backdoorkit.models.stages import block_names

Residual = Literal["attn", "mlp"]


def _is_transformer(names: list[str]) -> bool:
    return any(n.endswith((".attn", ".mlp")) for n in names)


def residual_names(model: nn.Module, residual: Residual = "attn") -> list[str]:
    """The residual connections a layer index counts, in order: the attention (or MLP) residual of
    each transformer block, or every skip of a model whose skips are one per block (ResNets).

    Raises:
        ConfigError: the model has no addressable skips, or ``residual="mlp"`` on a model whose
            skips are not attention / MLP pairs.
    """
    names = list(skips(model))
    if not names:
        raise ConfigError(
            f"{type(model).__name__} has no addressable skip connections "
            "(make it addressable with attach_skips)"
        )
    if _is_transformer(names):
        return [n for n in names if n.endswith(f".{residual}")]
    if residual == "mlp":
        raise ConfigError(f"{type(model).__name__} has no MLP residuals; residual='mlp' is for transformers")
    return names


def residual_name(model: nn.Module, layer: int | str, residual: Residual = "attn") -> str:
    """The skip name of residual ``layer``: an index into :func:`residual_names` (negative counts
    from the end), a skip name (``layer3.1``, ``blocks.2.mlp``) or a transformer block name
    (``blocks.2`` -> ``blocks.2.attn`` / ``.mlp``).

    Raises:
        ConfigError: the index is out of range.
        UnknownNameError: the name is no skip of the model.
    """
    names = residual_names(model, residual)
    if isinstance(layer, str):
        table = skips(model)
        for candidate in (layer, f"{layer}.{residual}"):
            if candidate in table:
                return candidate
        raise UnknownNameError(f"unknown residual {layer!r}; this model has: {', '.join(names)}")
    if not -len(names) <= layer < len(names):
        raise ConfigError(
            f"residual index {layer} out of range: {type(model).__name__} has {len(names)} "
            f"({names[0]} ... {names[-1]})"
        )
    return names[layer]


def block_before(model: nn.Module, block: int | str) -> tuple[str, str]:
    """``(split point, block)``: block ``block`` (an index into ``block_names``, negative from the
    end, or a block name) and the block just before it, where a stem holding everything before
    ``block`` is cut.

    Raises:
        ConfigError: ``block`` is the first block (nothing before it) or no block of the model.
    """
    names = block_names(model)
    if not names:
        raise ConfigError(f"{type(model).__name__} has no blocks to split at")
    if isinstance(block, str):
        if block not in names:
            raise ConfigError(f"unknown block {block!r}; blocks: {', '.join(names)}")
        index = names.index(block)
    else:
        if not -len(names) <= block < len(names):
            raise ConfigError(f"block index {block} out of range: the model has {len(names)} blocks")
        index = block % len(names)
    if index == 0:
        raise ConfigError(f"block {names[0]!r} is the first block: there is no representation before it")
    return names[index - 1], names[index]


def clean_rows(poisoned: PoisonedSet) -> ImageSet:
    """The rows of the poisoned training set that carry no backdoor."""
    keep = (~poisoned.mask).nonzero().flatten()
    return poisoned.data.subset(keep, name=f"{poisoned.data.name}:clean")
