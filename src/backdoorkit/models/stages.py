"""Stages, blocks and splits of a model: the one mechanism behind ``block_names``, ``forward_stages`` and
``split`` of our classifiers and of models made addressable with
:func:`~backdoorkit.models.fx_skips.attach_skips`.

* **Blocks** are the ordered split points: the module holding each residual :class:`Skip`
  (``layer1.0`` ... ``layer4.1`` in ResNet-18, ``block1.0`` in WRN, ``blocks.3`` in a ViT), or the
  stages of a model without skips (VGG's ``stage1`` ... ``stage5``).
* **Stages** are the coarse feature stages (``layer1`` ... ``layer4``): ``model.stage_names`` on our
  classifiers, the modules enclosing the blocks on traced models.
* **Split** at a block gives ``(stem, head)``: the stem computes everything up to and including the
  block, the head the rest (pooling and classifier included), with the *same* modules, so
  ``head(stem(x))`` equals ``model(x)`` bit for bit and training either trains the model.  This is
  the stem + new head of Trap-and-Replace (Wang et al., NeurIPS 2022).  :class:`Composite` joins
  them again; both pieces and the composite save and load with
  :func:`~backdoorkit.checkpoint.save_model` / :func:`~backdoorkit.checkpoint.load_model`.

Our classifiers are split along their :meth:`~backdoorkit.models.base.ImageClassifier.chain`
(``nn.Sequential`` stages are sliced, ``layer2[:2]`` / ``layer2[2:]``); traced models along their
``torch.fx`` graph, at the last node inside the block's module scope.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import fx, nn

from backdoorkit.errors import ConfigError
from backdoorkit.models.base import ModelSpec
from backdoorkit.models.registry import model_spec, register_wrapper
from backdoorkit.models.skips import Skip
from backdoorkit.models.taps import capture, resolve_modules

Pair = tuple[str, nn.Module]


# ------------------------------------------------------------------------------------------ names
def _unique(items: Sequence[str]) -> list[str]:
    return [x for x in dict.fromkeys(items) if x]


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def block_names(model: nn.Module) -> list[str]:
    """The ordered split points of ``model`` (see the module docstring)."""
    blocks = _unique([_parent(path) for path, m in model.named_modules() if isinstance(m, Skip)])
    return blocks or list(getattr(model, "stage_names", ()) or ())


def stage_names(model: nn.Module) -> list[str]:
    """``model.stage_names`` where the model has them, else the modules enclosing its blocks."""
    names = getattr(model, "stage_names", None)
    if names:
        return list(names)
    return _unique([_parent(b) or b for b in block_names(model)])


# --------------------------------------------------------------------------------- forward_stages
def forward_stages(
    model: nn.Module, x: torch.Tensor, names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """``{name: output}`` of the named stages / blocks / submodules (default: :func:`stage_names`).

    Our classifiers stop after the last chain entry needed; traced models run a graph cut after the
    last named node.  Outputs stay attached to the autograd graph.
    """
    wanted = list(stage_names(model) if names is None else ([names] if isinstance(names, str) else names))
    if not wanted:
        raise ConfigError(f"{type(model).__name__} has no named stages; pass names")
    if isinstance(model, fx.GraphModule):
        return _fx_forward_stages(model, x, wanted)
    resolve_modules(model, wanted)
    chain = getattr(model, "chain", None)
    with capture(model, wanted) as acts:
        if callable(chain):
            out = x
            for _, module in chain():
                out = module(out)
                if all(n in acts for n in wanted):
                    break
        else:
            model(x)
    missing = [n for n in wanted if n not in acts]
    if missing:
        raise ConfigError(f"{type(model).__name__}: {missing[0]!r} is not called in the forward pass")
    return {n: acts[n] for n in wanted}


# ------------------------------------------------------------------------------------------ split
def split(model: nn.Module, at: str) -> tuple[nn.Module, nn.Module]:
    """``(stem, head)`` of ``model`` cut after block ``at`` (see the module docstring).

    Both pieces share ``model``'s modules; each carries a ``spec`` (when ``model`` has one) so that it,
    and ``Composite(stem, head)``, can be saved and rebuilt.

    Raises:
        ConfigError: ``at`` is no split point of the model, or the model is neither one of our
            classifiers nor a traced (``attach_skips``) model.
    """
    chain = getattr(model, "chain", None)
    if callable(chain):
        found = _split_chain(chain(), at)
        if found is None:
            raise ConfigError(_bad_split(model, at))
        stem: nn.Module = Chain(found[0])
        head: nn.Module = Chain(found[1])
    elif isinstance(model, fx.GraphModule):
        stem, head = _fx_split(model, at)
    else:
        raise ConfigError(
            f"cannot split {type(model).__name__}: split needs one of our classifiers or a model "
            "made addressable with attach_skips"
        )
    stem.training = head.training = model.training  # the top flag only: the modules are shared
    parent = model_spec(model)
    for part, piece in (("stem", stem), ("head", head)):
        if parent is not None:
            piece.spec = ModelSpec("model_part", {"at": at, "part": part}, {"model": parent})
    if hasattr(model, "in_channels"):
        stem.in_channels = model.in_channels
    for attr in ("num_classes", "classes"):
        if hasattr(model, attr):
            setattr(head, attr, getattr(model, attr))
    return stem, head


def _bad_split(model: nn.Module, at: str) -> str:
    return f"cannot split {type(model).__name__} at {at!r}; split points: {', '.join(block_names(model))}"


def _split_chain(entries: list[Pair], at: str) -> tuple[list[Pair], list[Pair]] | None:
    """Cut a chain after the entry ``at`` or after ``at``'s position inside a ``Sequential`` entry."""
    for i, (name, module) in enumerate(entries):
        if name == at:
            if i == len(entries) - 1:
                return None  # nothing left for the head
            return entries[: i + 1], entries[i + 1 :]
        if at.startswith(name + ".") and isinstance(module, nn.Sequential):
            inner = _split_chain(list(module._modules.items()), at[len(name) + 1 :])  # type: ignore[arg-type]
            if inner is None:
                if at[len(name) + 1 :] == list(module._modules)[-1]:  # the stage's last block
                    return entries[: i + 1], entries[i + 1 :]
                return None
            first, rest = inner
            stem = [*entries[:i], (name, nn.Sequential(OrderedDict(first)))]
            return stem, [(name, nn.Sequential(OrderedDict(rest))), *entries[i + 1 :]]
    return None


class Chain(nn.Sequential):
    """A piece of a split classifier: named modules applied in order (shared with the model)."""

    def __init__(self, entries: Sequence[Pair]) -> None:
        super().__init__(OrderedDict(entries))


@register_wrapper("model_part", summary="the stem or head of a registered model split at a block")
def model_part(model: nn.Module, at: str, part: str) -> nn.Module:
    """``split(model, at)[0]`` for ``part="stem"``, ``[1]`` for ``"head"`` (rebuilds saved pieces)."""
    if part not in ("stem", "head"):
        raise ValueError(f"part must be 'stem' or 'head', got {part!r}")
    return split(model, at)[0 if part == "stem" else 1]


@register_wrapper("composite", summary="head(stem(x)): a split model, or a stem with a new head")
class Composite(nn.Module):
    """``head(stem(x))``: re-assembles :func:`split`'s pieces, or joins a stem with a new head (the
    stem + clean-trained head of Trap-and-Replace).  ``classes`` / ``num_classes`` come from the head,
    ``in_channels`` from the stem."""

    def __init__(self, stem: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.head = head
        if hasattr(stem, "in_channels"):
            self.in_channels = stem.in_channels
        for attr in ("num_classes", "classes"):
            if hasattr(head, attr):
                setattr(self, attr, getattr(head, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x))


# ------------------------------------------------------------------------------------------- fx
def _scope_paths(node: fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else str(k) for k, v in stack.items()]
    if node.op == "call_module":
        paths.append(str(node.target))
    return paths


def _last_node_in(gm: fx.GraphModule, path: str) -> fx.Node | None:
    last = None
    for node in gm.graph.nodes:
        if node.op not in ("placeholder", "output", "get_attr") and any(
            p == path or p.startswith(path + ".") for p in _scope_paths(node)
        ):
            last = node
    return last


def _fx_nodes(gm: fx.GraphModule, names: Sequence[str]) -> dict[str, fx.Node]:
    resolve_modules(gm, names)
    found = {}
    for name in names:
        node = _last_node_in(gm, name)
        if node is None:
            raise ConfigError(f"{type(gm).__name__}: {name!r} is not called in the forward pass")
        found[name] = node
    return found


def _fx_forward_stages(gm: fx.GraphModule, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    targets = _fx_nodes(gm, names)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    last = max(targets.values(), key=list(gm.graph.nodes).index)
    for node in gm.graph.nodes:
        env[node] = graph.node_copy(node, lambda a: env[a])
        if node is last:
            break
    graph.output({n: env[node] for n, node in targets.items()})
    return _graph_module(gm, graph, type(gm).__name__)(x)


def _graph_module(root: fx.GraphModule, graph: fx.Graph, name: str) -> fx.GraphModule:
    """A GraphModule over ``graph`` sharing ``root``'s modules, without dead nodes or unused modules."""
    out = fx.GraphModule(root, graph, class_name=name)
    out.graph.eliminate_dead_code()
    out.delete_all_unused_submodules()
    out.recompile()
    return out


def _fx_split(gm: fx.GraphModule, at: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    if at not in dict(gm.named_modules()):
        raise ConfigError(_bad_split(gm, at))
    cut = _fx_nodes(gm, [at])[at]
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    before, after = nodes[: index[cut] + 1], nodes[index[cut] + 1 :]
    for node in after:
        for used in node.all_input_nodes:
            if index[used] < index[cut] and used.op != "get_attr":
                raise ConfigError(
                    f"cannot split {type(gm).__name__} at {at!r}: the rest of the model also reads "
                    f"{used.name!r} from before it"
                )
    stem_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in before:
        env[node] = stem_graph.node_copy(node, lambda a: env[a])
    stem_graph.output(env[cut])

    head_graph = fx.Graph()
    env = {cut: head_graph.placeholder("x")}
    for node in after:
        for used in node.all_input_nodes:
            if used not in env:  # a tensor attribute read before the cut: read it again
                env[used] = head_graph.node_copy(used)
        if node.op == "output":
            head_graph.output(fx.map_arg(node.args[0], lambda a: env[a]))
        else:
            env[node] = head_graph.node_copy(node, lambda a: env[a])
    name = type(gm).__name__
    return _graph_module(gm, stem_graph, f"{name}Stem"), _graph_module(gm, head_graph, f"{name}Head")


__all__ = ["Chain", "Composite", "block_names", "forward_stages", "model_part", "split", "stage_names"]
