"""Addressable skips for models we did not write (torchvision, timm, user code), found with torch.fx.

:func:`attach_skips` traces the whole model with ``torch.fx.symbolic_trace`` semantics, finds every
*residual addition* and replaces it by a call to a :class:`~backdoorkit.models.skips.Skip` module, so
``skips``, ``set_gamma`` and ``scaled_skips`` work on the result exactly as on our own models.

What counts as a residual addition: a tensor ``add`` (``a + b``, ``a += b``, ``torch.add``,
``Tensor.add`` / ``add_``) whose two operands share a *fork* node such that

* one operand (the **shortcut**) is the fork itself (identity shortcut) or is reached from it by a
  short chain of at most :data:`MAX_PROJECTION` module calls (a projection such as torchvision's
  ``downsample`` = 1x1 conv + batch norm), and
* the other operand (the **residual branch**) depends on the fork through a longer path that uses at
  least one module or tensor attribute holding parameters/buffers.

Additions of constants, of position embeddings (``x + self.pos_embed``), shape arithmetic and two
parallel heads of equal depth are therefore left alone.  ``gamma`` multiplies the shortcut operand;
at ``gamma = beta = 1`` the :class:`Skip` computes ``branch + shortcut``, which is bit-identical to the
original addition (floating-point addition is commutative).

Names.  A skip is named after the common module-path prefix of the parameter-holding modules and
tensor attributes in its residual branch (``layer1.0`` for a torchvision BasicBlock), and its module
is registered at ``<prefix>.skip``.  When several residual additions share a prefix (the two of a
timm-style ViT block ``blocks.3``), or the prefix is the model itself, each is named after the child
of the prefix that holds the most parameters in its branch, ``blocks.3.attn`` and ``blocks.3.mlp``,
registered as ``blocks.3.attn_skip`` / ``blocks.3.mlp_skip``.  A branch lying entirely inside one leaf module
``conv`` is named ``conv`` and registered beside it as ``conv_skip``.

The result is a :class:`torch.fx.GraphModule` that keeps the original's module paths, so its
``state_dict`` has exactly the original's keys (in the same order; :class:`Skip` holds no tensors)
and foreign weights load into it with ``strict=True``.  It **shares** parameters and buffers with
the model it was made from; pass ``copy.deepcopy(model)`` to keep the two apart.

Decisions and limits:

* A model with no residual addition raises :class:`~backdoorkit.errors.ConfigError` (the caller asked
  for skips, so silently returning the model would hide a mistake such as passing a VGG);
  ``missing_ok=True`` returns the model unchanged with a warning instead.
* A model that already holds :class:`Skip` modules (our own models, or a model this function already
  processed) is returned unchanged.
* A model that cannot be traced symbolically (data-dependent Python control flow, ``len()`` of a
  tensor, numpy calls on tensors ...) raises :class:`ConfigError` naming the reason in one line.
* As with every fx trace, Python-level branches on ``self.training`` are fixed to the mode the model
  is in when traced (``nn.Dropout`` / ``nn.BatchNorm`` modules keep following ``train()``/``eval()``);
  a warning says so when the two modes trace to different graphs.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import fx, nn

from backdoorkit.errors import ConfigError
from backdoorkit.models.skips import Skip, skips

MAX_PROJECTION = 3
"""The longest chain of module calls a projection shortcut may have (avg-pool + conv + batch norm)."""

_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add, torch.Tensor.add, torch.Tensor.add_}
_INPLACE_FUNCTIONS = {operator.iadd, torch.Tensor.add_}
_ADD_METHODS = {"add", "add_", "__add__", "__iadd__"}
_INPLACE_METHODS = {"add_", "__iadd__"}
_COPIED_ATTRIBUTES = ("classes", "num_classes", "in_channels")


class _SkipAwareTracer(fx.Tracer):
    """The default tracer, with :class:`Skip` kept as a leaf (an existing skip is not an ``add``)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, Skip) or super().is_leaf_module(m, module_qualified_name)


@dataclass
class _Residual:
    """One residual addition found in the graph."""

    node: fx.Node
    shortcut_index: int
    prefix: tuple[str, ...]
    child_params: dict[str, int]
    beside_leaf: bool = False
    target: str = ""


def attach_skips(model: nn.Module, *, missing_ok: bool = False) -> nn.Module:
    """Return ``model`` with every residual addition routed through an addressable :class:`Skip`.

    Args:
        model: any ``nn.Module`` that torch.fx can trace symbolically (torchvision ResNets, timm
            ViTs, most user code).
        missing_ok: when the model has no residual addition, warn and return it unchanged instead
            of raising :class:`ConfigError`.

    Returns:
        A :class:`torch.fx.GraphModule` (sharing the model's parameters) whose ``skips()`` lists one
        skip per residual addition, or ``model`` itself when it already has :class:`Skip` modules.

    Raises:
        ConfigError: the model cannot be traced, or has no residual addition (see ``missing_ok``).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"attach_skips needs a torch.nn.Module, got {type(model).__name__}")
    if skips(model):
        return model
    name = type(model).__name__
    graph = _trace(model)
    found = _find_residuals(model, graph)
    if not found:
        msg = f"attach_skips: found no residual additions in {name}; it has no skip connections to address"
        if missing_ok:
            warnings.warn(msg + "; returning it unchanged", stacklevel=2)
            return model
        raise ConfigError(msg + " (pass missing_ok=True to get the model back unchanged)")
    _check_mode_independent(model, graph)
    gm = fx.GraphModule(model, graph, class_name=name)
    _restore_hierarchy(model, gm)
    _assign_targets(gm, found)
    for res in found:
        skip = Skip()
        skip.training = model.training
        if not gm.add_submodule(res.target, skip):
            raise ConfigError(f"attach_skips: cannot register a skip module at {res.target!r}")
        # read the operands now: an earlier rewrite may have replaced one of them
        shortcut = res.node.args[res.shortcut_index]
        branch = res.node.args[1 - res.shortcut_index]
        with graph.inserting_before(res.node):
            call = graph.call_module(res.target, (branch, shortcut))
        res.node.replace_all_uses_with(call)
        graph.erase_node(res.node)
    graph.lint()
    gm.recompile()
    for attr in _COPIED_ATTRIBUTES:
        if attr in vars(model):
            setattr(gm, attr, getattr(model, attr))
    return gm


# ---------------------------------------------------------------------------------------- tracing
def _trace(model: nn.Module) -> fx.Graph:
    try:
        return _SkipAwareTracer().trace(model)
    except Exception as exc:  # fx raises TraceError, RuntimeError, TypeError, ... - all mean "untraceable"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if len(reason) > 200:
            reason = reason[:200] + "..."
        raise ConfigError(
            f"attach_skips: cannot trace {type(model).__name__} with torch.fx "
            f"({type(exc).__name__}: {reason}); "
            "a model with data-dependent control flow needs its residual adds wrapped in Skip by hand"
        ) from None


def _check_mode_independent(model: nn.Module, graph: fx.Graph) -> None:
    """Warn when tracing in the other train/eval mode gives another graph (Python-level mode branches)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.train(not model.training)
        other = _SkipAwareTracer().trace(model)
    except Exception:
        other = None
    finally:
        for m, mode in modes:
            m.training = mode
    if other is None or _code(other) != _code(graph):
        current = "train" if model.training else "eval"
        warnings.warn(
            f"attach_skips: {type(model).__name__} branches on self.training in Python; the returned "
            f"graph is fixed to {current} mode for those branches (trace it in the mode you will use)",
            stacklevel=3,
        )


def _code(graph: fx.Graph) -> str:
    return graph.python_code("self").src


# -------------------------------------------------------------------------------------- detection
def _add_operands(node: fx.Node) -> tuple[fx.Node, fx.Node, bool] | None:
    """``(a, b, in_place)`` if ``node`` is a plain two-tensor addition, else ``None``."""
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        in_place = node.target in _INPLACE_FUNCTIONS
    elif node.op == "call_method" and node.target in _ADD_METHODS:
        in_place = node.target in _INPLACE_METHODS
    else:
        return None
    if len(node.args) != 2 or any(k != "alpha" for k in node.kwargs):
        return None
    if node.kwargs.get("alpha", 1) != 1:
        return None
    a, b = node.args
    if not isinstance(a, fx.Node) or not isinstance(b, fx.Node) or a is b:
        return None
    return a, b, in_place


def _ancestors(node: fx.Node) -> set[fx.Node]:
    """``node`` and every node it depends on."""
    seen = {node}
    stack = [node]
    while stack:
        for parent in stack.pop().all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def _shortcut_chain(
    shortcut: fx.Node, branch_ancestors: set[fx.Node]
) -> tuple[fx.Node, list[fx.Node]] | None:
    """Walk back from ``shortcut`` through at most ``MAX_PROJECTION`` single-input module calls until
    a node the branch depends on (the fork); ``(fork, chain)`` or ``None``."""
    chain: list[fx.Node] = []
    cur = shortcut
    while cur not in branch_ancestors:
        if cur.op != "call_module" or len(chain) >= MAX_PROJECTION or len(cur.all_input_nodes) != 1:
            return None
        if chain and len(cur.users) != 1:
            return None
        chain.append(cur)
        cur = cur.all_input_nodes[0]
    return cur, chain


def _branch_nodes(fork: fx.Node, branch: fx.Node, branch_ancestors: set[fx.Node]) -> list[fx.Node]:
    """Nodes on a path from ``fork`` (excluded) to ``branch`` (included), plus the tensor attributes
    (``get_attr``) they read."""
    inside: list[fx.Node] = []
    seen = {fork}
    stack = [fork]
    while stack:
        for user in stack.pop().users:
            if user in branch_ancestors and user not in seen:
                seen.add(user)
                inside.append(user)
                stack.append(user)
    attrs = [p for n in inside for p in n.all_input_nodes if p.op == "get_attr" and p not in seen]
    return inside + list(dict.fromkeys(attrs))


def _tensor_sizes(root: nn.Module, nodes: Iterable[fx.Node]) -> dict[str, int]:
    """``{module path: number of parameter/buffer elements}`` of the modules and tensor attributes
    the nodes use (only those holding tensors)."""
    sizes: dict[str, int] = {}
    for n in nodes:
        if n.op == "call_module":
            mod = root.get_submodule(str(n.target))
            tensors = [*mod.parameters(), *mod.buffers()]
            if tensors:
                sizes[str(n.target)] = sizes.get(str(n.target), 0) + sum(t.numel() for t in tensors)
        elif n.op == "get_attr":
            owner, _, _ = str(n.target).rpartition(".")
            value = _get_attr(root, str(n.target))
            if isinstance(value, torch.Tensor):
                sizes[owner] = sizes.get(owner, 0) + value.numel()
    return sizes


def _get_attr(root: nn.Module, target: str) -> object:
    obj: object = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _common_prefix(paths: Iterable[str]) -> tuple[str, ...]:
    split = [tuple(p.split(".")) if p else () for p in paths]
    if not split:
        return ()
    prefix = split[0]
    for parts in split[1:]:
        n = 0
        while n < min(len(prefix), len(parts)) and prefix[n] == parts[n]:
            n += 1
        prefix = prefix[:n]
    return prefix


def _find_residuals(root: nn.Module, graph: fx.Graph) -> list[_Residual]:
    order = {n: i for i, n in enumerate(graph.nodes)}
    found: list[_Residual] = []
    for node in graph.nodes:
        operands = _add_operands(node)
        if operands is None:
            continue
        a, b, in_place = operands
        if in_place and any(order[u] > order[node] for u in a.users if u is not node):
            continue  # the mutated tensor is read after the add: an out-of-place Skip would differ
        best: tuple[tuple[int, int], fx.Node, fx.Node, list[fx.Node]] | None = None
        for shortcut, branch in ((a, b), (b, a)):
            anc = _ancestors(branch)
            walked = _shortcut_chain(shortcut, anc)
            if walked is None:
                continue
            fork, chain = walked
            if fork is branch:
                continue
            inside = _branch_nodes(fork, branch, anc)
            sizes = _tensor_sizes(root, inside)
            real = [n for n in inside if n.op != "get_attr"]
            if not sizes or len(real) <= len(chain):
                continue
            key = (len(chain), sum(_tensor_sizes(root, chain).values()))
            if best is None or key < best[0]:
                best = (key, shortcut, branch, inside)
        if best is None:
            continue
        _, shortcut, _, inside = best
        sizes = _tensor_sizes(root, inside)
        prefix = _common_prefix(sizes)
        child_params: dict[str, int] = {}
        for path, size in sizes.items():
            parts = tuple(path.split(".")) if path else ()
            if len(parts) > len(prefix):
                child = parts[len(prefix)]
                child_params[child] = child_params.get(child, 0) + size
        found.append(_Residual(node, node.args.index(shortcut), prefix, child_params))
    return found


# ------------------------------------------------------------------------------------------ naming
def _assign_targets(gm: fx.GraphModule, found: list[_Residual]) -> None:
    """Choose the module path of each new :class:`Skip` (see the module docstring)."""
    leaves = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    groups: dict[tuple[str, ...], list[_Residual]] = {}
    for res in found:
        prefix = res.prefix
        if prefix and ".".join(prefix) in leaves:
            # the whole branch is one leaf module: name the skip after it, register it beside it
            parent = prefix[:-1]
            res.prefix, res.child_params, res.beside_leaf = parent, {prefix[-1]: 1}, True
            groups.setdefault(parent, []).append(res)
            continue
        groups.setdefault(prefix, []).append(res)
    for prefix, members in groups.items():
        owner = gm.get_submodule(".".join(prefix)) if prefix else gm
        taken = set(dir(owner)) | set(owner._modules)
        lead = ".".join(prefix) + "." if prefix else ""
        if prefix and len(members) == 1 and not members[0].beside_leaf and "skip" not in taken:
            members[0].target = lead + "skip"
            taken.add("skip")
            continue
        for k, res in enumerate(members):
            # the biggest child; on a tie the first one the branch uses
            biggest = max(res.child_params.items(), key=lambda kv: kv[1])[0] if res.child_params else None
            child = biggest or f"res{k}"
            field, n = f"{child}_skip", 2
            while field in taken:
                field, n = f"{child}_{n}_skip", n + 1
            taken.add(field)
            res.target = lead + field


# ------------------------------------------------------------------------------- keeping the paths
def _restore_hierarchy(model: nn.Module, gm: fx.GraphModule) -> None:
    """Make ``gm`` hold every module, parameter and buffer of ``model`` at the same path, with the
    same persistence and in the same order, so the two ``state_dict``s have identical keys.

    ``fx.GraphModule`` copies only what the graph uses and creates placeholder ``nn.Module``s for the
    modules traced through; unused tensors would be lost and non-persistent buffers read through
    ``get_attr`` would become persistent.
    """
    for path, orig in model.named_modules():
        mod = gm if not path else gm.get_submodule(path)
        if mod is orig:
            continue
        for name, param in orig._parameters.items():
            if name not in mod._parameters and param is not None:
                mod.register_parameter(name, param)
        for name, buf in orig._buffers.items():
            if name not in mod._buffers and buf is not None:
                mod.register_buffer(name, buf, persistent=name not in orig._non_persistent_buffers_set)
            elif name in orig._non_persistent_buffers_set:
                mod._non_persistent_buffers_set.add(name)
        for name, child in orig._modules.items():
            if child is not None and name not in mod._modules:
                mod.add_module(name, child)
        _reorder(mod._parameters, list(orig._parameters))
        _reorder(mod._buffers, list(orig._buffers))
        _reorder(mod._modules, list(orig._modules))
        mod.training = orig.training


def _reorder(table: dict[str, object], order: list[str]) -> None:
    """Reorder a module's table in place: ``order`` first, anything else after."""
    items = dict(table)
    table.clear()
    for key in order:
        if key in items:
            table[key] = items.pop(key)
    table.update(items)


__all__ = ["MAX_PROJECTION", "attach_skips"]
